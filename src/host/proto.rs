//! What ferry asks of a host and what the host answers, as typed values: one
//! [`Request`] per operation, one [`Reply`] per kind of answer. Every operation on a
//! host goes through [`super::Host::call`], the one seam between deciding and doing:
//! the real transports carry requests to the host, and the `#[cfg(test)]` fake answers
//! them from a model, so the engine's decisions are tested without machines.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::health::{Checks, Failure};
use crate::postgres::{Backup, Database};

use super::lock::{Held, Holder};
use super::{Finished, HostState, InstanceRecord, Volume, VolumeCreated};

/// An instance's environment. It carries secrets, so its `Debug` shows names only; it
/// travels on stdin or the agent's socket, never on a command line.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Env(pub BTreeMap<String, String>);

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// How an instance runs: its start command, environment (ferry adds the app's secrets
/// on the host), checks, how it is stopped and restarted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Launch {
    pub start: String,
    pub env: Env,
    pub checks: Checks,
    pub stop: Stop,
    pub restart: Restart,
    /// A revert to this version: the host starts it as it ran when it was last made
    /// current (its command, checks, stop and restart settings, `[env]` and secrets),
    /// keeping only this launch's per-instance variables. Without such a record on the
    /// host, this launch is used as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_ran: Option<String>,
}

/// `[[restart]]`: what the agent does when an instance's process ends by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restart {
    pub policy: RestartPolicy,
    /// Restarts in a row before it gives up (the count starts again once an instance
    /// has run for a minute).
    pub retries: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl Default for Restart {
    /// Fly's default for machines a deploy creates: on failure, up to 10 times.
    fn default() -> Self {
        Restart { policy: RestartPolicy::OnFailure, retries: 10 }
    }
}

/// How an instance is stopped: its `kill_signal` (`SIGTERM`, ...), then SIGKILL after
/// `timeout`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stop {
    pub signal: String,
    pub timeout: Duration,
}

/// One listener of an app's front door on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Door {
    /// Where it listens.
    pub listen: std::net::SocketAddr,
    pub kind: DoorKind,
    /// `Host` names the app answers for on a shared port (empty: any name no other
    /// app of the account claims).
    pub hosts: Vec<String>,
    /// The region the host is in (`Fly-Region`).
    pub region: String,
    /// TLS is terminated here with these files (HTTP doors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    /// Every request is redirected to HTTPS on this port (`force_https`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_https: Option<u16>,
    /// The process groups whose instances it routes to; empty: every instance (as
    /// doors recorded before process groups were).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The service's `internal_port` when it is not the first service's: requests go
    /// to each instance's port for it. `None`: the instance's `$PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u16>,
}

/// A certificate chain and its private key, PEM files on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFiles {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DoorKind {
    /// HTTP/1.1 and HTTP/2 (cleartext), upgrades included.
    Http,
    /// Raw TCP: each connection is relayed to one instance.
    Tcp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Who the agent is (no app needed).
    Hello,
    /// The agent exits and leaves its instances running, for a newer one to adopt.
    Handover,
    /// Everything ferry plans from: releases, instances, lock, current, volumes.
    Observe,
    /// The TCP ports something listens on, on the whole machine.
    Listening,
    LockAcquire {
        holder: Holder,
    },
    /// Replaces a stale lock, only if it is still the one with `stale` as token.
    LockTakeover {
        stale: Option<String>,
        holder: Holder,
    },
    LockRefresh {
        token: String,
    },
    /// `None`: remove whatever lock is there.
    LockRelease {
        token: Option<String>,
    },
    HasArtifact {
        sha256: String,
    },
    /// Unpacks `artifacts/<sha256>.tar.gz` and verifies it against `sums`.
    InstallRelease {
        sha256: String,
        version: String,
        sums: String,
    },
    /// Streams the file given as input (the artifact, or with `raw` its plain tar)
    /// into `releases/<version>`, verified against `sums`.
    ShipRelease {
        sha256: String,
        version: String,
        size: u64,
        raw: bool,
        sums: String,
    },
    /// Installs the release from another app directory on the same machine.
    InstallLinked {
        source: String,
        sha256: String,
        version: String,
    },
    StartInstance {
        record: InstanceRecord,
        launch: Launch,
    },
    /// Makes the app's front door on this host exactly `doors` (listening where they
    /// say, closing what the app no longer has).
    OpenDoors {
        doors: Vec<Door>,
    },
    /// The front door's switch, atomically: `add` take traffic, `retire` stop taking
    /// it; then each retired instance is drained (its requests in flight finish, its
    /// upgraded connections get `stop.timeout`), stopped with `stop` and removed.
    Cutover {
        add: Vec<String>,
        retire: Vec<String>,
        stop: Stop,
    },
    /// The instances take `weight` percent of the app's clients (a canary; sticky by
    /// cookie), beside the routing table, their counts of answers started anew; no
    /// ids clears it.
    Canary {
        ids: Vec<String>,
        weight: u8,
        /// It stops taking clients after this, whatever happens to the caller.
        expires: Duration,
    },
    /// How many requests the instances answered through the front door, and how many
    /// of those were errors (5xx, or no answer).
    Traffic {
        ids: Vec<String>,
    },
    /// The front door answers every HTTP request with 503 and `message` (maintenance),
    /// or routes again (`None`). Kept across agent restarts.
    Maintenance {
        message: Option<String>,
    },
    /// The instances answer requests that carry the preview header (`Ferry-Preview`)
    /// until they take traffic or go: a new release, seen before the switch.
    Preview {
        ids: Vec<String>,
    },
    /// Stops the instance and starts `record` in its place, in one step.
    SwitchInstance {
        record: InstanceRecord,
        launch: Launch,
    },
    StopInstance {
        id: String,
        stop: Stop,
    },
    RemoveInstance {
        id: String,
    },
    /// Waits until the instance (process `pid`) passes its checks, exits, or
    /// `deadline` passes.
    WaitHealthy {
        id: String,
        pid: u32,
        deadline: Duration,
    },
    /// Waits until the instance has stayed up `min_healthy` since it became healthy,
    /// or exits before.
    WaitStable {
        id: String,
        pid: u32,
        min_healthy: Duration,
    },
    /// Runs `checks` once against the instance on `port`.
    Probe {
        port: u16,
        /// The instance's ports for its other services (see `InstanceRecord::ports`).
        #[serde(default, with = "super::port_pairs")]
        ports: std::collections::BTreeMap<u16, u16>,
        checks: Checks,
    },
    /// The last `lines` of an instance's log; with `skip_checks` (for a failure report),
    /// the lines its health checks left there are left out and secret values redacted.
    LogTail {
        id: String,
        lines: usize,
        skip_checks: bool,
    },
    /// The complete lines an instance's log gained since byte `from` (from the log's
    /// end when `None`), and the offset to read on from.
    LogRead {
        id: String,
        from: Option<u64>,
    },
    AppendHistory {
        line: String,
    },
    ReadHistory,
    /// The steps after a rollout: mark `current`, append `history`, prune, and with
    /// `token` release the lock last.
    Finish {
        /// The app's running nodes, for its peers file (BEAM releases); `None`: left as is.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peers: Option<Vec<String>>,
        token: Option<String>,
        current: Option<String>,
        history: Option<String>,
        prune: Vec<String>,
    },
    /// Runs the release_command from `releases/<version>`; output lines stream.
    ReleaseCommand {
        version: String,
        command: String,
        env: Env,
        limit: Option<Duration>,
    },
    /// Replaces (or adds) secrets; `lines` are `KEY=base64`.
    SecretsSet {
        keys: Vec<String>,
        lines: String,
    },
    SecretsRaw,
    SecretsReplace {
        raw: String,
    },
    SecretsList,
    SecretGet {
        key: String,
    },
    BackupCreate {
        db: Database,
        meta: Backup,
        keep: usize,
    },
    BackupRegister {
        backup: Backup,
        keep: usize,
    },
    BackupList,
    BackupRestore {
        db: Database,
        backup: Backup,
    },
    VolumeCreate {
        volume: Volume,
    },
    VolumeDestroy {
        id: String,
    },
    VolumeAttach {
        instance: String,
        name: String,
        destination: String,
    },
    /// Removes the app's directory (instances already stopped).
    Destroy,
}

impl Request {
    /// What the request does, for error messages: "starting instance".
    pub fn step(&self) -> &'static str {
        match self {
            Request::Hello => "greeting the agent",
            Request::Handover => "handing the agent over",
            Request::Observe => "reading state",
            Request::Listening => "listing listening ports",
            Request::LockAcquire { .. } => "taking the lock",
            Request::LockTakeover { .. } => "taking over the lock",
            Request::LockRefresh { .. } => "refreshing the lock",
            Request::LockRelease { .. } => "releasing the lock",
            Request::HasArtifact { .. } => "looking for the artifact",
            Request::InstallRelease { .. } | Request::ShipRelease { .. } => "unpacking the release",
            Request::InstallLinked { .. } => "linking the release",
            Request::StartInstance { .. } => "starting instance",
            Request::SwitchInstance { .. } => "replacing instance",
            Request::OpenDoors { .. } => "opening the front door",
            Request::Cutover { .. } => "switching the front door",
            Request::Preview { .. } => "previewing instances",
            Request::Maintenance { .. } => "switching maintenance",
            Request::Canary { .. } => "routing to the canary",
            Request::Traffic { .. } => "counting the canary's answers",
            Request::StopInstance { .. } => "stopping instance",
            Request::RemoveInstance { .. } => "removing instance",
            Request::WaitHealthy { .. } => "watching instance",
            Request::WaitStable { .. } => "watching instance settle",
            Request::Probe { .. } => "checking instance",
            Request::LogTail { .. } | Request::LogRead { .. } => "reading log",
            Request::AppendHistory { .. } => "recording history",
            Request::ReadHistory => "reading history",
            Request::Finish { .. } => "finishing",
            Request::ReleaseCommand { .. } => "running the release_command",
            Request::SecretsSet { .. } => "storing secrets",
            Request::SecretsRaw => "reading secrets",
            Request::SecretsReplace { .. } => "copying secrets",
            Request::SecretsList => "listing secrets",
            Request::SecretGet { .. } => "reading a secret",
            Request::BackupCreate { .. } => "taking the backup",
            Request::BackupRegister { .. } => "recording the backup",
            Request::BackupList => "listing backups",
            Request::BackupRestore { .. } => "restoring the backup",
            Request::VolumeCreate { .. } => "creating a volume",
            Request::VolumeDestroy { .. } => "destroying a volume",
            Request::VolumeAttach { .. } => "attaching a volume",
            Request::Destroy => "removing the app",
        }
    }
}

/// What taking a lock came to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockReply {
    /// Taken; the host's state read under it.
    Acquired(Box<HostState>),
    Held(Held),
    /// A takeover found the lock no longer the stale one (someone else got it).
    Lost,
}

/// How a command ended: its exit code, or the signal that ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// It ran out of its time limit and was stopped, with everything it started.
    pub timed_out: bool,
}

impl Exit {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }
}

/// Who an agent is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub pid: u32,
    pub version: String,
    /// sha256 of its executable.
    pub exe: String,
    /// The protocol it speaks.
    #[serde(default)]
    pub protocol: u32,
    /// Its executable's modification time (seconds): of two builds of one version, the
    /// later one is taken for the newer.
    #[serde(default)]
    pub built: u64,
    /// Its process's start time (see `InstanceRecord::starttime`).
    #[serde(default)]
    pub starttime: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Agent(AgentInfo),
    Done,
    /// A handover declined, and why (it serves other callers).
    Stays(String),
    State(Box<HostState>),
    Ports(Vec<u16>),
    Lock(LockReply),
    /// A yes or no: an artifact is there, a lock is still ours, an instance was killed.
    Flag(bool),
    /// Whether a release was installed (false: already there) and the bytes sent.
    Installed {
        installed: bool,
        sent: u64,
    },
    Pid(u32),
    Health(Result<Duration, Failure>),
    Lines(Vec<String>),
    /// Log lines, and the offset after the last of them.
    LogChunk {
        lines: Vec<String>,
        end: u64,
    },
    Text(String),
    Finished(Finished),
    Exit(Exit),
    Secrets(Vec<(String, String)>),
    Secret(Option<String>),
    /// By instance: requests answered, how many of them were errors, and the pid of
    /// its process while it runs past its checks (0 when it does not).
    Traffic(Vec<(String, u64, u64, u32)>),
    Backup(Box<Backup>),
    Backups(Vec<Backup>),
    VolumeCreated(VolumeCreated),
    /// `Err(instance)`: an instance holds the volume.
    VolumeDestroyed(Result<(), String>),
    Path(String),
}

/// The release a [`Request::ShipRelease`] sends.
#[derive(Debug, Clone, Copy)]
pub struct Parcel<'a> {
    pub sha256: &'a str,
    pub version: &'a str,
    /// Bytes of what is sent.
    pub size: u64,
    /// The plain tar stream instead of the artifact.
    pub raw: bool,
    /// `sha256sum -c` lines the unpacked release is verified against.
    pub sums: &'a str,
}

/// What streams alongside a request: a file sent after it (with bytes-sent progress),
/// and where output lines go as they arrive.
#[derive(Default, Clone, Copy)]
pub struct Io<'a> {
    pub file: Option<&'a Path>,
    pub progress: Option<&'a (dyn Fn(u64) + Send + Sync)>,
    pub on_line: Option<&'a (dyn Fn(&str) + Send + Sync)>,
}
