//! What ferry tells its user, as [`Event`]s handed to a [`Reporter`]: human (indicatif
//! spinners per region on a TTY, plain lines otherwise, all on stderr), JSON lines on
//! stdout, or quiet. Read commands hand their data to [`Reporter::show`]: a table (see
//! [`views`]) on stdout, or one JSON line. Logic emits events and data; only
//! reporters print.

mod human;
pub mod views;

use std::io::Write;
use std::sync::Mutex;

use serde::Serialize;

pub use human::Human;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    DeployStarted {
        kind: String,
        app: String,
        version: String,
        previous: Option<String>,
        strategy: String,
        regions: Vec<String>,
    },
    /// One step of a plan (`--dry-run` prints them all).
    Plan(PlanItem),
    Warning {
        message: String,
    },
    LockTakenOver {
        host: String,
        previous_holder: String,
        reason: String,
    },
    Built {
        path: String,
        sha256: String,
        size: u64,
        version: String,
    },
    Upload {
        host: String,
        bytes_sent: u64,
        skipped: bool,
    },
    ReleaseInstalled {
        host: String,
        version: String,
        already_present: bool,
    },
    ReplicaWaiting {
        region: String,
        replica: String,
        lag_bytes: u64,
    },
    ReplicaCaughtUp {
        region: String,
        replica: String,
    },
    BackupStarted {
        host: String,
        database: String,
    },
    BackupTaken {
        host: String,
        id: String,
        database: String,
        size: u64,
        sha256: String,
    },
    ReleaseCommandStarted {
        host: String,
        command: String,
    },
    ReleaseCommandOutput {
        line: String,
    },
    ReleaseCommandFinished {
        host: String,
        success: bool,
        exit_code: Option<i32>,
        duration_ms: u64,
    },
    RegionStarted {
        region: String,
        instances: usize,
    },
    InstanceUpdating {
        region: String,
        /// The instance's process group.
        group: String,
        host: String,
        instance: String,
        from: Option<String>,
        to: String,
    },
    InstanceUnchanged {
        region: String,
        host: String,
        instance: String,
        version: String,
    },
    /// A canary takes a share of the clients while it is watched.
    CanaryWatched {
        region: String,
        host: String,
        instance: String,
        weight: u8,
        secs: f64,
    },
    /// A new instance is still waiting for its checks: said every few seconds once
    /// the wait is no longer short.
    InstanceWaiting {
        region: String,
        group: String,
        host: String,
        instance: String,
        version: String,
        elapsed_ms: u64,
        /// `wait_timeout`: when it fails.
        deadline_ms: u64,
        /// What its last check said (`check `http_service.checks[0]`: GET /health
        /// answered 503 Service Unavailable`); `None` before any ran.
        last_check: Option<String>,
    },
    InstanceHealthy {
        region: String,
        /// The instance's process group.
        group: String,
        host: String,
        instance: String,
        version: String,
        port: u16,
        elapsed_ms: u64,
    },
    InstanceFailed {
        region: String,
        /// The instance's process group.
        group: String,
        host: String,
        instance: String,
        version: String,
        reason: String,
        log: Vec<String>,
    },
    InstanceReverted {
        region: String,
        host: String,
        instance: String,
        version: Option<String>,
    },
    InstanceRevertFailed {
        region: String,
        host: String,
        instance: String,
        reason: String,
    },
    InstanceStopped {
        region: String,
        host: String,
        instance: String,
    },
    RegionFinished {
        region: String,
        outcome: String,
    },
    Pruned {
        host: String,
        version: String,
    },
    Finished {
        outcome: Outcome,
        version: Option<String>,
        previous: Option<String>,
        message: String,
        duration_ms: u64,
    },
}

/// One step of a plan, by phase.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum PlanItem {
    /// A host's front door: where it listens (`ip:port (http|tcp)`).
    Doors {
        host: String,
        region: String,
        listen: Vec<String>,
    },
    /// `action`: `upload` or `present`; `wave`: `first`, `primary` or `others`.
    Ship {
        host: String,
        region: String,
        wave: String,
        action: String,
    },
    RestoreBackup {
        id: String,
    },
    Backup {
        host: String,
    },
    ReleaseCommand {
        host: String,
        command: String,
    },
    ReplicaGate {
        region: String,
    },
    /// `action`: `create`, `replace` or `keep`; `batch` counts from 1 (0 for `keep`).
    Instance {
        region: String,
        /// Its process group.
        group: String,
        host: String,
        instance: String,
        action: String,
        /// How a replacement is made: beside its old instance, or stop-then-start and why.
        #[serde(skip_serializing_if = "Option::is_none")]
        how: Option<String>,
        batch: usize,
        from: Option<String>,
        to: String,
        /// Why an instance is replaced, when it already runs the target version.
        #[serde(skip_serializing_if = "Option::is_none")]
        why: Option<String>,
    },
    Stop {
        region: String,
        host: String,
        instance: String,
        version: String,
    },
    Finish {
        record: String,
        version: String,
        mark_current: bool,
        prune: Vec<Pruned>,
    },
}

/// A release a plan prunes from a host.
#[derive(Debug, Clone, Serialize)]
pub struct Pruned {
    pub host: String,
    pub version: String,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Reverted,
    Failed,
}

pub trait Reporter: Send + Sync {
    fn event(&self, event: &Event);
    /// What a read command found: `text` is its human form (a table), `json` the same
    /// data as one JSON value. Printed on stdout.
    fn show(&self, json: &serde_json::Value, text: &str) {
        let _ = (json, print_text(text));
    }
    /// A remark for a person reading along (on stderr); machine output leaves it out.
    fn note(&self, _text: &str) {}
    /// Bytes sent so far to one host (a progress bar; never in `--json`).
    fn upload_progress(&self, _host: &str, _sent: u64, _total: u64) {}
    /// The operation failed with `error` (its exit code `code`); `--json` says so as
    /// its last line.
    fn error(&self, _message: &str, _hint: Option<&str>, _code: i32) {}
    /// Stop any live display before the process prints its final error; `--json` ends
    /// a command that said nothing of how it ended with a `finished` line.
    fn finish(&self) {}
}

/// `--json`: one JSON object per line on stdout, the last one `finished` or `error`.
pub struct Json {
    out: Mutex<std::io::Stdout>,
    /// Whether the last line (`finished` or `error`) was written.
    ended: std::sync::atomic::AtomicBool,
}

impl Json {
    pub fn new() -> Self {
        Self { out: Mutex::new(std::io::stdout()), ended: std::sync::atomic::AtomicBool::new(false) }
    }
}

impl Default for Json {
    fn default() -> Self {
        Self::new()
    }
}

impl Json {
    fn line(&self, line: &str) {
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

impl Reporter for Json {
    fn event(&self, event: &Event) {
        if matches!(event, Event::Finished { .. }) {
            self.ended.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        if let Ok(line) = serde_json::to_string(event) {
            self.line(&line);
        }
    }

    /// A list is one line per item (a log line, a release, a volume), anything else
    /// one line.
    fn show(&self, json: &serde_json::Value, _text: &str) {
        match json {
            serde_json::Value::Array(items) => items.iter().for_each(|item| self.line(&item.to_string())),
            other => self.line(&other.to_string()),
        }
    }

    fn error(&self, message: &str, hint: Option<&str>, code: i32) {
        self.ended.store(true, std::sync::atomic::Ordering::SeqCst);
        let line = serde_json::json!({ "event": "error", "message": message, "hint": hint, "exit_code": code });
        self.line(&line.to_string());
    }

    fn finish(&self) {
        if !self.ended.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.event(&Event::Finished {
                outcome: Outcome::Succeeded,
                version: None,
                previous: None,
                message: "done".into(),
                duration_ms: 0,
            });
        }
    }
}

/// `-q`: no events, only the data a read command was asked for and the final error
/// (which `main` prints).
pub struct Quiet;

impl Reporter for Quiet {
    fn event(&self, _event: &Event) {}
}

/// Writes a read command's human output to stdout (a closed pipe ends it quietly).
fn print_text(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    if !text.is_empty() && !text.ends_with('\n') {
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// What an operation has done so far, as its events tell: what an interrupted run
/// reports.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// `deploy`, `rollback`, ... once it started changing the fleet.
    pub kind: Option<String>,
    pub version: Option<String>,
    pub previous: Option<String>,
    /// Instances started on the new version, and how many of those passed their checks.
    pub updating: usize,
    pub healthy: usize,
    pub reverted: usize,
    /// Whether the release_command started and had not finished.
    pub in_release_command: bool,
    /// Whether anything on the hosts was seen changing (an upload, a backup, an
    /// instance started or stopped), whatever the operation.
    pub changed: bool,
}

impl Progress {
    /// Where an interrupted operation left the fleet, and what finishes it.
    pub fn interrupted(&self) -> String {
        let (Some(kind), Some(version)) = (&self.kind, &self.version) else {
            return if self.changed {
                "interrupted while it was changing the hosts; `ferry status` shows where things stand, and running \
                 the same command again finishes it"
                    .into()
            } else {
                "interrupted before it reported any change; `ferry status` shows where things stand, and running the \
                 command again does what it was asked"
                    .into()
            };
        };
        let mut text = format!("interrupted during the {kind} of {version}: ");
        if self.in_release_command {
            text.push_str("its release_command was running (the host stops it at its timeout); ");
        }
        let moving = self.updating.saturating_sub(self.healthy + self.reverted);
        let on_new = self.healthy.saturating_sub(self.reverted);
        let previous = self.previous.as_deref();
        let back = previous.map_or_else(String::new, |p| format!("; `ferry rollback {p}` goes back"));
        let previous = previous.unwrap_or("their old release");
        let _ = std::fmt::Write::write_fmt(
            &mut text,
            format_args!(
                "{on_new} instance(s) already run {version} and passed their checks, {moving} being replaced (may be on \
             either release), the rest still run {previous}. The lock goes when this process does (over SSH, within \
             30 s). Running the same command again finishes the {kind}{back}."
            ),
        );
        text
    }
}

/// A reporter that keeps [`Progress`] while passing everything on.
pub struct Tracked {
    inner: std::sync::Arc<dyn Reporter>,
    progress: Mutex<Progress>,
}

impl Tracked {
    pub fn new(inner: std::sync::Arc<dyn Reporter>) -> Self {
        Self { inner, progress: Mutex::new(Progress::default()) }
    }

    pub fn progress(&self) -> Progress {
        self.progress.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

impl Reporter for Tracked {
    fn event(&self, event: &Event) {
        if let Ok(mut p) = self.progress.lock() {
            match event {
                Event::DeployStarted { kind, version, previous, .. } => {
                    *p = Progress {
                        kind: Some(kind.clone()),
                        version: Some(version.clone()),
                        previous: previous.clone(),
                        ..Progress::default()
                    };
                }
                Event::ReleaseCommandStarted { .. } => {
                    p.in_release_command = true;
                    p.changed = true;
                }
                Event::ReleaseCommandFinished { .. } => p.in_release_command = false,
                Event::Upload { .. } | Event::BackupStarted { .. } | Event::InstanceStopped { .. } => p.changed = true,
                Event::InstanceUpdating { .. } => {
                    p.updating += 1;
                    p.changed = true;
                }
                Event::InstanceHealthy { .. } => p.healthy += 1,
                Event::InstanceReverted { .. } | Event::InstanceRevertFailed { .. } => p.reverted += 1,
                _ => {}
            }
        }
        self.inner.event(event);
    }

    fn show(&self, json: &serde_json::Value, text: &str) {
        self.inner.show(json, text);
    }

    fn note(&self, text: &str) {
        self.inner.note(text);
    }

    fn upload_progress(&self, host: &str, sent: u64, total: u64) {
        self.inner.upload_progress(host, sent, total);
    }

    fn error(&self, message: &str, hint: Option<&str>, code: i32) {
        self.inner.error(message, hint, code);
    }

    fn finish(&self) {
        self.inner.finish();
    }
}
