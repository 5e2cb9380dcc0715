//! Release versions: which strings are allowed (they become directory names on hosts and
//! `RELEASE_VERSION` in environments) and where a version comes from when none is given.
//! It asks git, read-only; it must not change the repository.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::SystemTime;

use super::ReleaseError;

const MAX_VERSION_LEN: usize = 128;

/// Checks that `version` can be a directory name and an environment value as is.
///
/// # Errors
///
/// `InvalidVersion` unless it is 1 to 128 of `[A-Za-z0-9._+-]`, not starting with `.`
/// or `-`.
pub fn validate_version(version: &str) -> Result<(), ReleaseError> {
    if is_valid(version) {
        Ok(())
    } else {
        Err(ReleaseError::InvalidVersion { version: version.to_owned() })
    }
}

fn is_valid(version: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-');
    !version.is_empty()
        && version.len() <= MAX_VERSION_LEN
        && !version.starts_with(['.', '-'])
        && version.chars().all(allowed)
}

/// The explicit version if given, else `git describe --tags --always --dirty` in `dir`,
/// else (no git, not a repository, no commit yet) the current UTC time as
/// `YYYYMMDDTHHMMSSZ`.
///
/// # Errors
///
/// `InvalidVersion` for an invalid explicit version, `InvalidGitVersion` when the
/// described version is not valid (a tag with `/`, say).
pub fn resolve_version(explicit: Option<&str>, dir: &Path) -> Result<String, ReleaseError> {
    if let Some(version) = explicit {
        validate_version(version)?;
        return Ok(version.to_owned());
    }
    if let Some(version) = git_output(dir, &["describe", "--tags", "--always", "--dirty"]) {
        if !is_valid(&version) {
            return Err(ReleaseError::InvalidGitVersion { version, dir: dir.to_owned() });
        }
        return Ok(version);
    }
    let version = timestamp(SystemTime::now());
    validate_version(&version)?;
    Ok(version)
}

/// The full commit id of `HEAD` in `dir`, if `dir` is in a git repository with a commit.
#[must_use]
pub fn git_commit(dir: &Path) -> Option<String> {
    git_output(dir, &["rev-parse", "--verify", "--quiet", "HEAD"])
}

/// Trimmed stdout of a successful git command, or `None` when git is missing, fails or
/// prints nothing. Its stderr is dropped: "not a git repository" is an expected answer.
fn git_output(dir: &Path, args: &[&str]) -> Option<String> {
    let output =
        Command::new("git").args(args).current_dir(dir).stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// `2026-11-22T21:04:11Z` becomes `20261122T210411Z`.
fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string().replace(['-', ':'], "")
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn git(dir: &Path, args: &[&str]) {
        let status = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"])
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?} failed");
    }

    #[test]
    fn validate_version_accepts_letters_digits_and_separators() {
        for version in ["v1.2.3+build-4", "1", "20261122T210411Z", "release_7", &"a".repeat(128)] {
            assert!(validate_version(version).is_ok(), "{version:?} should be valid");
        }
    }

    #[test]
    fn validate_version_refuses_shell_path_and_control_characters() {
        let long = "a".repeat(129);
        for version in ["v1;rm", "a b", "../x", "", "$(x)", ".hidden", "-rf", "a/b", "a\nb", "é", &long] {
            let err = validate_version(version).unwrap_err();
            assert!(matches!(err, ReleaseError::InvalidVersion { .. }), "{version:?}: {err}");
        }
    }

    #[test]
    fn invalid_version_message_escapes_control_characters() {
        let message = validate_version("v1\x1b[31m\n").unwrap_err().to_string();
        assert!(message.starts_with("invalid release version `v1\\u{1b}[31m\\n`"), "{message}");
        assert!(!message.contains('\x1b') && !message.contains('\n'));
    }

    #[test]
    fn resolve_version_prefers_the_explicit_version() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(resolve_version(Some("v9"), dir.path()).unwrap(), "v9");
        let err = resolve_version(Some("v 9"), dir.path()).unwrap_err();
        assert!(matches!(err, ReleaseError::InvalidVersion { .. }));
        assert!(err.is_usage());
    }

    #[test]
    fn resolve_version_falls_back_to_a_utc_timestamp_outside_git() {
        let dir = tempfile::tempdir().unwrap();
        let version = resolve_version(None, dir.path()).unwrap();
        assert_eq!(version.len(), 16, "{version}");
        assert!(version.ends_with('Z') && version.as_bytes()[8] == b'T', "{version}");
        assert!(version[..8].bytes().chain(version[9..15].bytes()).all(|b| b.is_ascii_digit()), "{version}");
        assert_eq!(git_commit(dir.path()), None);
    }

    #[test]
    fn resolve_version_falls_back_in_a_repository_without_commits() {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q"]);
        let version = resolve_version(None, dir.path()).unwrap();
        assert_eq!(version.len(), 16, "{version}");
    }

    #[test]
    fn resolve_version_uses_git_describe_with_tags_and_dirty() {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q"]);
        std::fs::write(dir.path().join("a.txt"), "1").unwrap();
        git(dir.path(), &["add", "a.txt"]);
        git(dir.path(), &["commit", "-q", "-m", "one"]);
        git(dir.path(), &["tag", "v1.0.0"]);
        assert_eq!(resolve_version(None, dir.path()).unwrap(), "v1.0.0");
        assert_eq!(git_commit(dir.path()).map(|c| c.len()), Some(40));

        std::fs::write(dir.path().join("a.txt"), "2").unwrap();
        assert_eq!(resolve_version(None, dir.path()).unwrap(), "v1.0.0-dirty");
    }

    #[test]
    fn resolve_version_refuses_a_described_version_with_a_slash() {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q"]);
        git(dir.path(), &["commit", "-q", "--allow-empty", "-m", "one"]);
        git(dir.path(), &["tag", "release/1.0"]);
        let err = resolve_version(None, dir.path()).unwrap_err();
        assert!(
            matches!(err, ReleaseError::InvalidGitVersion { ref version, .. } if version == "release/1.0"),
            "{err}"
        );
    }

    #[test]
    fn timestamp_is_compact_utc() {
        let at = UNIX_EPOCH + Duration::from_secs(1_795_381_451);
        assert_eq!(timestamp(at), "20261122T210411Z");
    }
}
