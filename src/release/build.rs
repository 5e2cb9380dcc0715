//! Runs the user's build command (`[ferry.build] command`) that produces the release
//! directory. Its output goes to ferry's stderr, never stdout, which belongs to `--json`.
//! It must not interpret the command: `sh -c` does, as in a terminal.

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

use super::ReleaseError;

/// Runs `sh -c command` in `dir` with `RELEASE_VERSION` set. Its stdin is closed, so a
/// build that would prompt fails instead of hanging a non-interactive deploy.
///
/// # Errors
///
/// `BuildSpawn` when `sh` cannot be started in `dir` (a missing directory, say),
/// `BuildFailed` when the command exits non-zero or is killed.
pub fn run_build_command(command: &str, dir: &Path, version: &str) -> Result<(), ReleaseError> {
    let status = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .env("RELEASE_VERSION", version)
        .stdin(Stdio::null())
        .stdout(Stdio::from(io::stderr()))
        .stderr(Stdio::inherit())
        .status()
        .map_err(|source| ReleaseError::BuildSpawn { command: command.to_owned(), dir: dir.to_owned(), source })?;
    if status.success() {
        Ok(())
    } else {
        Err(ReleaseError::BuildFailed { command: command.to_owned(), status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_command_runs_in_the_directory_with_release_version() {
        let dir = tempfile::tempdir().unwrap();
        run_build_command(r#"printf '%s' "$RELEASE_VERSION" > version.txt"#, dir.path(), "v1.2.3").unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("version.txt")).unwrap(), "v1.2.3");
    }

    #[test]
    fn build_command_failure_carries_the_command_and_exit_status() {
        let dir = tempfile::tempdir().unwrap();
        let err = run_build_command("exit 3", dir.path(), "v1").unwrap_err();
        match &err {
            ReleaseError::BuildFailed { command, status } => {
                assert_eq!(command, "exit 3");
                assert_eq!(status.code(), Some(3));
            }
            other => panic!("unexpected error: {other}"),
        }
        assert_eq!(err.to_string(), "build command `exit 3` failed (exit status: 3)");
    }

    #[test]
    fn build_command_in_a_missing_directory_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = run_build_command("true", &missing, "v1").unwrap_err();
        assert!(matches!(err, ReleaseError::BuildSpawn { .. }), "{err}");
        assert!(err.to_string().contains(&*missing.to_string_lossy()), "{err}");
    }

    #[test]
    fn build_command_does_not_write_to_stdout() {
        // The test harness captures stdout and stderr alike, so check from the outside:
        // a child shell whose stdout is a pipe must see nothing on it.
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("probe.sh");
        std::fs::write(&script, "echo to-stdout\n").unwrap();
        let output = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "release::build::tests::probe_child", "--nocapture", "--test-threads=1"])
            .env("FERRY_BUILD_PROBE_DIR", dir.path())
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stdout.contains("to-stdout"), "stdout: {stdout}");
        assert!(stderr.contains("to-stdout"), "stderr: {stderr}");
    }

    /// Runs only as the child of `build_command_does_not_write_to_stdout`.
    #[test]
    fn probe_child() {
        if let Some(dir) = std::env::var_os("FERRY_BUILD_PROBE_DIR") {
            run_build_command("sh probe.sh", Path::new(&dir), "v1").unwrap();
        }
    }
}
