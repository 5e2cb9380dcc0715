//! The release_command, run once on the release machine: from a scratch directory that
//! shows the release (as an instance's does), with the app's environment and secrets,
//! in its own session. Its output streams to the caller and into
//! `release_command.log` (0600). Past its time limit, everything it started is
//! stopped; a background child it left behind does not hold the deploy.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWrite, BufReader};

use crate::host::Exit;

use super::files::{remove_tree, App};
use super::ops::{exit_of, send_line};
use super::procs::{self, Ended, Reaper};

/// How long, after the command ends, output still in flight is read.
const DRAIN: Duration = Duration::from_millis(200);
/// How often what the command started is looked at.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// One run of a release_command.
pub struct Job<'a> {
    pub reaper: &'a Reaper,
    /// The executable commands are launched through (`ferry agent launch`).
    pub exe: &'a Path,
    pub app: &'a App,
    pub version: &'a str,
    pub command: &'a str,
    pub env: &'a BTreeMap<String, String>,
    pub limit: Option<Duration>,
}

/// Runs the job; the caller hears its output as it comes.
pub async fn run<W: AsyncWrite + Unpin>(job: &Job<'_>, write: &mut W) -> Result<Exit, String> {
    let (app, version) = (job.app, job.version);
    let release = app.release(version);
    if app.installed(version).is_none() {
        return Err(format!("release {version} is not installed"));
    }
    let token = format!("{}-{}", std::process::id(), crate::host::now_ms());
    let scratch = app.dir.join(format!(".release-command-{token}"));
    let (root, tmp) = (scratch.join("root"), scratch.join("tmp"));
    let prepared = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(&root)?;
        std::fs::create_dir_all(&tmp)?;
        for entry in std::fs::read_dir(&release)? {
            let entry = entry?;
            if entry.file_name() != super::files::RELEASE_FILE {
                std::os::unix::fs::symlink(entry.path(), root.join(entry.file_name()))?;
            }
        }
        Ok(())
    })();
    if let Err(e) = prepared {
        let _ = remove_tree(&scratch);
        return Err(format!("preparing the release_command's directory: {e}"));
    }
    let result = run_in(job, (&root, &tmp), &token, write).await;
    let _ = remove_tree(&scratch);
    result
}

async fn run_in<W: AsyncWrite + Unpin>(
    job: &Job<'_>,
    (root, tmp): (&Path, &Path),
    token: &str,
    write: &mut W,
) -> Result<Exit, String> {
    let (app, version, env) = (job.app, job.version, job.env);
    let mut vars = super::ops::helper_env(&BTreeMap::new());
    let secrets = app.secrets();
    let redactor = crate::redact::Redactor::new(&secrets, env);
    vars.extend(
        env.iter()
            .filter(|(k, _)| !super::supervisor::OWN_VARS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    vars.extend(secrets.into_iter().filter(|(k, _)| !super::supervisor::OWN_VARS.contains(&k.as_str())));
    vars.extend(
        env.iter()
            .filter(|(k, _)| super::supervisor::OWN_VARS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    vars.insert("TMPDIR".into(), tmp.display().to_string());
    vars.insert("FERRY_RELEASE_COMMAND_RUN".into(), token.into());
    let argv = vec!["sh".to_string(), "-c".to_string(), job.command.to_string()];
    let mut launch = Command::new(job.exe);
    launch
        .args(["agent", "launch"])
        .env_clear()
        .envs(&vars)
        .env("FERRY_LAUNCH_CWD", root)
        .env("FERRY_LAUNCH_NOFILE", super::nofile_at_start())
        .env("FERRY_LAUNCH_ARGV", serde_json::to_string(&argv).unwrap_or_default())
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (mut child, ended) = job.reaper.spawn(&mut launch).map_err(|e| format!("starting the release_command: {e}"))?;
    let pid = child.id();
    let mut log = super::files::open_private_log(&app.dir.join("release_command.log"))
        .map_err(|e| format!("opening release_command.log: {e}"))?;
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let _ = writeln!(log, "== {stamp} release_command for {version}");
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err("the release_command's output could not be read".into());
    };
    let stdout = tokio::process::ChildStdout::from_std(stdout).map_err(|e| e.to_string())?;
    let stderr = tokio::process::ChildStderr::from_std(stderr).map_err(|e| e.to_string())?;
    let (mut out, mut err) = (BufReader::new(stdout).lines(), BufReader::new(stderr).lines());
    let (mut out_done, mut err_done) = (false, false);
    let mut ended = Box::pin(ended);
    let deadline = job.limit.map(|l| tokio::time::Instant::now() + l);
    let out_line = Out { log: &mut log, redactor: &redactor, deadline };
    let timer = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(timer);
    let mut finished: Option<(Ended, bool)> = None;
    // Everything the command starts, looked at as it runs (see `procs::Family`).
    let mut family = procs::Family::new(pid);
    let mut look = tokio::time::interval(LOOK_EVERY);
    // Set once the command has exited: what is still in flight is read until then; a
    // background child that keeps the output open is stopped rather than waited for.
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        if let (true, true, Some((status, timed_out))) = (out_done, err_done, finished) {
            if !timed_out {
                stop_leftovers(pid, token, &mut family);
            }
            return Ok(exit_of(status, timed_out));
        }
        let drained = drain_until.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            line = out.next_line(), if !out_done => match line {
                Ok(Some(line)) => out_line.emit(write, line).await,
                _ => out_done = true,
            },
            line = err.next_line(), if !err_done => match line {
                Ok(Some(line)) => out_line.emit(write, line).await,
                _ => err_done = true,
            },
            status = &mut ended, if finished.is_none() => {
                finished = Some((status.unwrap_or(Ended::Unknown), false));
                drain_until = Some(tokio::time::Instant::now() + DRAIN);
            },
            () = tokio::time::sleep_until(drained), if drain_until.is_some() => {
                out_done = true;
                err_done = true;
            },
            _ = look.tick(), if finished.is_none() => family.look(),
            () = &mut timer, if finished.is_none() => {
                // Out of time: the command and everything it started go.
                family.look();
                procs::kill_group(pid, rustix::process::Signal::TERM);
                family.kill(rustix::process::Signal::TERM);
                tokio::time::sleep(Duration::from_millis(500)).await;
                stop_leftovers(pid, token, &mut family);
                let status = tokio::time::timeout(Duration::from_secs(5), &mut ended).await;
                let status = status.ok().and_then(Result::ok).unwrap_or(Ended::Unknown);
                finished = Some((status, true));
                out_done = true;
                err_done = true;
            },
        }
    }
}

/// Where each line of output goes: the log and the caller, with secret values redacted.
struct Out<'a> {
    log: &'a std::fs::File,
    redactor: &'a crate::redact::Redactor,
    deadline: Option<tokio::time::Instant>,
}

impl Out<'_> {
    /// Writes a line; a caller that stops reading holds this only until the deadline, so
    /// the time limit still ends the command.
    async fn emit<W: AsyncWrite + Unpin>(&self, write: &mut W, line: String) {
        let line = self.redactor.redact(&line).into_owned();
        let _ = writeln!(&mut &*self.log, "{line}");
        match self.deadline {
            Some(at) => {
                let _ = tokio::time::timeout_at(at, send_line(write, line)).await;
            }
            None => send_line(write, line).await,
        }
    }
}

/// Kills the command's process group, everything seen descending from it and
/// everything that carries its mark.
fn stop_leftovers(pid: u32, token: &str, family: &mut procs::Family) {
    family.look();
    procs::kill_group(pid, rustix::process::Signal::KILL);
    family.kill(rustix::process::Signal::KILL);
    for left in procs::marked_with("FERRY_RELEASE_COMMAND_RUN", token) {
        procs::kill(left, rustix::process::Signal::KILL);
    }
}
