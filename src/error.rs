//! The error every command returns, with the exit code it maps to and an optional
//! hint saying what to run next. Variants carry what a user needs to act: host,
//! version, step.

use crate::config::ConfigError;
use crate::host::HostError;
use crate::release::{ArtifactError, ReleaseError};
use crate::transport::TransportError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{message}")]
    Usage { message: String, hint: Option<String> },
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error("failed to reach `{host}` while {step}")]
    Unreachable { host: String, step: &'static str, source: HostError },
    #[error("{step} failed")]
    Host { step: &'static str, source: HostError },
    #[error("`{host}` is locked by {holder}{}", .waited.map(|w| format!(" (still, after waiting {})", humantime::format_duration(w))).unwrap_or_default())]
    Locked { host: String, holder: String, waited: Option<std::time::Duration> },
    #[error("{message}")]
    Failed { message: String, hint: Option<String> },
    #[error("failed to {action} `{path}`")]
    Io { action: &'static str, path: String, source: std::io::Error },
    /// A command ferry ran for the user (`ferry exec`) exited with `code`: ferry exits
    /// with it too, saying nothing more.
    #[error("the command exited with {code}")]
    Exited { code: i32 },
}

/// A host operation that failed before anything changed: unreachable hosts get the
/// connection hint, hosts that answered but could not do it get a host-side hint.
pub fn before_change(host: &str, step: &'static str, source: HostError) -> Error {
    match source {
        source if source.is_unreachable() => Error::Unreachable { host: host.to_string(), step, source },
        other => Error::Failed {
            message: other.to_string(),
            hint: Some(format!(
                "nothing was changed; check `{host}`: free disk space (`df -h`) and the deploy root's permissions"
            )),
        },
    }
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Usage { .. } => 2,
            Error::Release(e) if e.is_usage() => 2,
            Error::Artifact(e) if e.is_usage() => 2,
            Error::Exited { code } => *code,
            _ => 1,
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Usage { hint, .. } | Error::Failed { hint, .. } => hint.clone(),
            Error::Locked { waited: None, .. } => Some(
                "wait for it to finish, pass `--lock-wait 5m`, or run `ferry lock release` if you are sure it is dead (a dead holder's lease goes stale within 30s)".into(),
            ),
            Error::Locked { waited: Some(_), .. } => Some(
                "it is still working (its lease is being refreshed); `ferry lock status` shows what it is doing; `ferry lock release` only if you are sure it is dead".into(),
            ),
            Error::Unreachable { host, source, .. } => Some(host_key_hint(source).unwrap_or_else(|| {
                format!("nothing was changed; check that `{host}` is up and reachable (`ssh {host} true`), then run the command again")
            })),
            _ => None,
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Error::Usage { message: message.into(), hint: None }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Error::Failed { message: message.into(), hint: None }
    }
}

fn host_key_hint(error: &HostError) -> Option<String> {
    match error {
        HostError::Transport(TransportError::HostKey { hint, .. }) => Some(hint.clone()),
        _ => None,
    }
}

/// An error and all its causes on one line: `a: b: c`.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}
