//! What ferry tells its user, as [`Event`]s handed to a [`Reporter`]: human (indicatif
//! spinners per region on a TTY, plain lines otherwise, all on stderr), JSON lines on
//! stdout, or quiet. Logic emits events; only reporters print.

mod human;

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
    Plan {
        region: String,
        instance: String,
        host: String,
        action: String,
        from: Option<String>,
        to: String,
    },
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
    InstanceHealthy {
        region: String,
        host: String,
        instance: String,
        version: String,
        port: u16,
        elapsed_ms: u64,
    },
    InstanceFailed {
        region: String,
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

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Reverted,
    Failed,
}

pub trait Reporter: Send + Sync {
    fn event(&self, event: &Event);
    /// Bytes sent so far to one host (a progress bar; never in `--json`).
    fn upload_progress(&self, _host: &str, _sent: u64, _total: u64) {}
    /// Stop any live display before the process prints its final error.
    fn finish(&self) {}
}

pub struct Json {
    out: Mutex<std::io::Stdout>,
}

impl Json {
    pub fn new() -> Self {
        Self { out: Mutex::new(std::io::stdout()) }
    }
}

impl Default for Json {
    fn default() -> Self {
        Self::new()
    }
}

impl Reporter for Json {
    fn event(&self, event: &Event) {
        if let (Ok(line), Ok(mut out)) = (serde_json::to_string(event), self.out.lock()) {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

/// `-q`: nothing but the final error (which `main` prints).
pub struct Quiet;

impl Reporter for Quiet {
    fn event(&self, _event: &Event) {}
}
