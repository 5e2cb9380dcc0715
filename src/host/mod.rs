//! The on-host layout (DESIGN.md) and the operations ferry performs there: observe
//! state, install a release, start/stop instances, read logs, keep history, hold the
//! lock. Each is a typed [`Request`] through [`Host::call`], the one seam between the
//! engine and the machines; the methods below are its typed faces. The same code
//! serves the local target and SSH hosts. This module performs what it is asked;
//! deciding what to do belongs to `deploy`.

pub mod lock;
pub mod proto;
mod remote;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::health::{Checks, Failure};
use crate::postgres::{Backup, Database};
use crate::transport::{Transport, TransportError};

pub use proto::{AgentInfo, Env, Exit, Io, Launch, LockReply, Reply, Request, Restart, RestartPolicy, Stop};

/// One machine of the fleet, in one region, holding one app's directory.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub region: String,
    pub transport: Transport,
    /// `<root>/<app>` on the machine; may start with `~/`.
    pub app_dir: String,
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{step} failed on `{host}`: {message}")]
    Step { host: String, step: &'static str, message: String },
}

impl HostError {
    /// Whether the host could not be reached at all (nothing ran there).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, HostError::Transport(TransportError::Connection { .. } | TransportError::HostKey { .. }))
    }
}

/// An instance as recorded in `instances/<id>/instance.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstanceRecord {
    pub id: String,
    pub region: String,
    /// Its process group (`FLY_PROCESS_GROUP`); records from before groups are `app`.
    #[serde(default = "default_group")]
    pub group: String,
    pub host: String,
    pub version: String,
    pub port: u16,
    /// Its ports for the services after the first: their `internal_port` -> the
    /// instance's own (`FERRY_PORT_<internal_port>`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty", with = "port_pairs")]
    pub ports: std::collections::BTreeMap<u16, u16>,
    pub created_at: u64,
    pub started_at: u64,
    #[serde(default)]
    pub pid: u32,
    /// The process's start time (clock ticks since boot, from `/proc/<pid>/stat`): with
    /// the pid, what tells the instance's process from another that got its pid later.
    #[serde(default)]
    pub starttime: u64,
    /// The kernel's boot id when it started: start times count from boot, so a pid and
    /// start time recorded before a reboot may name another process after it.
    #[serde(default)]
    pub boot: String,
    /// What the instance runs with, as digests: a deploy of the same version with other
    /// settings replaces it.
    #[serde(default)]
    pub config: Identity,
}

/// A port map as a list of pairs: JSON keys are strings, and a record is read
/// through `#[serde(flatten)]`, which does not turn them back into numbers.
pub mod port_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(map: &BTreeMap<u16, u16>, serializer: S) -> Result<S::Ok, S::Error> {
        map.iter().collect::<Vec<_>>().serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<u16, u16>, D::Error> {
        Ok(Vec::<(u16, u16)>::deserialize(deserializer)?.into_iter().collect())
    }
}

fn default_group() -> String {
    crate::config::DEFAULT_GROUP.to_string()
}

/// Digests of what an instance was started with.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    /// `[env]`.
    pub env: String,
    /// The secrets file.
    pub secrets: String,
    /// The start command.
    pub start: String,
    /// The health checks.
    pub checks: String,
    /// How it is stopped and restarted: `kill_signal`, `kill_timeout`, `[[restart]]`.
    #[serde(default)]
    pub supervision: String,
}

impl Identity {
    /// What differs from `wanted`, by name (`env`, `secrets`, ...); empty when nothing.
    pub fn differences(&self, wanted: &Identity) -> Vec<&'static str> {
        let mut differ = Vec::new();
        for (name, mine, theirs) in [
            ("env", &self.env, &wanted.env),
            ("secrets", &self.secrets, &wanted.secrets),
            ("start command", &self.start, &wanted.start),
            ("checks", &self.checks, &wanted.checks),
            ("kill signal, kill timeout or restart policy", &self.supervision, &wanted.supervision),
        ] {
            if !theirs.is_empty() && mine != theirs {
                differ.push(name);
            }
        }
        differ
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceState {
    #[serde(flatten)]
    pub record: InstanceRecord,
    pub alive: bool,
    /// What the host's agent knows of it.
    #[serde(default)]
    pub runtime: Runtime,
    /// In the front door's routing table (it takes traffic while it passes its checks).
    #[serde(default)]
    pub routed: bool,
}

/// What the agent knows of an instance while it runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Runtime {
    /// `starting`, `running`, `restarting`, `crashed` (its restart policy gave up),
    /// `exited` or `stopped`.
    pub state: String,
    /// Restarts by its restart policy since it was last started by an operation.
    pub restarts: u32,
    /// How its last process ended: `exit 1`, `signal 9 (SIGKILL)`.
    pub last_exit: Option<String>,
    /// When its process started, in ms since the epoch.
    pub up_since: Option<u64>,
    /// The last round of health checks.
    pub health: Option<Health>,
}

/// One round of an instance's health checks.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    pub passing: bool,
    /// The failing check's error, when failing.
    pub detail: Option<String>,
    /// When, in ms since the epoch.
    pub at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstalledRelease {
    pub version: String,
    pub sha256: String,
    pub installed_at: u64,
}

/// A volume: storage on one host, bound to at most one instance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub region: String,
    pub host: String,
    pub size_gb: u64,
    pub created_at: String,
    pub attached: Option<String>,
}

/// What `volume_create` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeCreated {
    Created,
    /// Not enough room: the filesystem's free KiB.
    NoSpace(u64),
}

/// Everything ferry reads from a host in one round trip.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostState {
    pub releases: Vec<InstalledRelease>,
    pub instances: Vec<InstanceState>,
    pub lock: Option<lock::Held>,
    pub current: Option<String>,
    pub volumes: Vec<Volume>,
    /// sha256 of the secrets file, when there is one (to spot hosts that lack them).
    pub secrets: Option<String>,
    /// TCP ports something listens on (on the machine, not just this app); read only
    /// when a new instance needs a port ([`Host::listening`]).
    #[serde(default)]
    pub listening: Vec<u16>,
    /// How the host's agent comes back after a reboot (`systemd`, `cron`, `none`);
    /// unknown for the local target.
    #[serde(default)]
    pub boot: Option<String>,
    /// Where the app's front door listens on the host (`ip:port`).
    #[serde(default)]
    pub doors: Vec<String>,
    /// Whether the app has a routing table on the host (instances outside it take no
    /// traffic).
    #[serde(default)]
    pub routes: bool,
    /// The message the front door answers every request with, while in maintenance.
    #[serde(default)]
    pub maintenance: Option<String>,
    /// A BEAM release is current here (it has `releases/start_erl.data`): its nodes get
    /// the peers file.
    #[serde(default)]
    pub beam: bool,
}

impl HostState {
    pub fn has_release(&self, version: &str) -> bool {
        self.releases.iter().any(|r| r.version == version)
    }
}

/// What [`Host::finish`] did.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Finished {
    pub current: bool,
    pub history: bool,
    pub pruned: Vec<String>,
    /// The script itself failed (its stderr).
    pub error: Option<String>,
}

/// Runs `op` on every host at once; each host's name and result, in the hosts' order.
/// For steps that are independent per host (recording history, marking a release
/// current, releasing a lock): over SSH each is a round trip, and hosts in a row
/// would add them up.
/// How long a bookkeeping request (a history line, releasing the lock) may take: a
/// host that does not answer within it is left as it is (its lock goes stale), so one
/// hung host cannot keep an operation that has already failed from ending.
pub const BOOKKEEPING_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `request` to `host`, given up after [`BOOKKEEPING_LIMIT`].
pub async fn bookkeeping<T>(
    host: &str,
    step: &'static str,
    request: impl std::future::Future<Output = Result<T, HostError>>,
) -> Result<T, HostError> {
    tokio::time::timeout(BOOKKEEPING_LIMIT, request).await.unwrap_or_else(|_| {
        Err(HostError::Step {
            host: host.to_string(),
            step,
            message: format!("no answer within {}", humantime::format_duration(BOOKKEEPING_LIMIT)),
        })
    })
}

pub async fn on_each<T, Fut>(hosts: impl IntoIterator<Item = Host>, op: impl Fn(Host) -> Fut) -> Vec<(String, T)>
where
    T: Send + 'static,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for (i, host) in hosts.into_iter().enumerate() {
        let name = host.name.clone();
        let work = op(host);
        tasks.spawn(async move { (i, name, work.await) });
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(result) = joined {
            results.push(result);
        }
    }
    results.sort_by_key(|(i, _, _)| *i);
    results.into_iter().map(|(_, name, result)| (name, result)).collect()
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Unwraps the one reply variant a request expects, or names the host that answered
/// something else.
macro_rules! expect {
    ($self:ident, $request:expr, $io:expr, $pattern:pat => $value:expr) => {{
        let request = $request;
        let step = request.step();
        match $self.call(request, $io).await? {
            $pattern => Ok($value),
            other => Err($self.unexpected(step, &other)),
        }
    }};
}

impl Host {
    /// The address other machines use for this host: loopback for the local target,
    /// the host part of `user@host:port` for SSH.
    pub fn address(&self) -> String {
        self.transport.address()
    }

    /// Performs one request on the host, through its agent.
    pub async fn call(&self, request: Request, io: Io<'_>) -> Result<Reply, HostError> {
        match &self.transport {
            Transport::Local(_) => {
                let step = request.step();
                crate::agent::client::call(&self.app_dir, request, io).await.map_err(|e| match e {
                    crate::agent::client::AgentError::Failed { step: failed, message } => {
                        HostError::Step { host: self.name.clone(), step: remote::known_step(&failed, step), message }
                    }
                    unreachable @ crate::agent::client::AgentError::Unreachable { .. } => HostError::Step {
                        host: self.name.clone(),
                        step: "reaching ferry's agent",
                        message: unreachable.to_string(),
                    },
                })
            }
            Transport::Ssh(ssh) => Box::pin(remote::call(self, ssh, request, io)).await,
            #[cfg(test)]
            Transport::Fake(fake) => fake.call(self, request, io).await,
        }
    }

    fn unexpected(&self, step: &'static str, reply: &Reply) -> HostError {
        HostError::Step { host: self.name.clone(), step, message: format!("unexpected answer {reply:?}") }
    }

    pub async fn observe(&self) -> Result<HostState, HostError> {
        expect!(self, Request::Observe, Io::default(), Reply::State(state) => *state)
    }

    /// The TCP ports something listens on, on the whole machine.
    pub async fn listening(&self) -> Result<Vec<u16>, HostError> {
        expect!(self, Request::Listening, Io::default(), Reply::Ports(ports) => ports)
    }

    /// Whether `artifacts/<sha>.tar.gz` is already on the host (creating the layout).
    pub async fn has_artifact(&self, sha256: &str) -> Result<bool, HostError> {
        let request = Request::HasArtifact { sha256: sha256.to_string() };
        expect!(self, request, Io::default(), Reply::Flag(present) => present)
    }

    pub fn artifact_path(&self, sha256: &str) -> String {
        format!("{}/artifacts/{sha256}.tar.gz", self.app_dir)
    }

    /// Unpacks the artifact into `releases/<version>` and verifies it against
    /// `sums` (sha256sum lines). Returns false when it was already installed.
    pub async fn install_release(&self, sha256: &str, version: &str, sums: &str) -> Result<bool, HostError> {
        let request = Request::InstallRelease {
            sha256: sha256.to_string(),
            version: version.to_string(),
            sums: sums.to_string(),
        };
        expect!(self, request, Io::default(), Reply::Installed { installed, .. } => installed)
    }

    /// Streams the file at `path` (the artifact, or with `raw` its plain tar stream)
    /// into `releases/<version>` on the host, unpacking it as it arrives, and verifies
    /// it against `sums`. Returns whether it was installed (false: already there) and
    /// the bytes sent.
    pub async fn ship_release(
        &self,
        path: &std::path::Path,
        release: &proto::Parcel<'_>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(bool, u64), HostError> {
        let request = Request::ShipRelease {
            sha256: release.sha256.to_string(),
            version: release.version.to_string(),
            size: release.size,
            raw: release.raw,
            sums: release.sums.to_string(),
        };
        let io = Io { file: Some(path), progress: Some(progress), on_line: None };
        expect!(self, request, io, Reply::Installed { installed, sent } => (installed, sent))
    }

    /// Installs the release from `source`, another host on this same machine that
    /// holds it verified, as hard links. Returns false when it was already there.
    pub async fn install_linked(&self, source: &Host, sha256: &str, version: &str) -> Result<bool, HostError> {
        let request = Request::InstallLinked {
            source: source.app_dir.clone(),
            sha256: sha256.to_string(),
            version: version.to_string(),
        };
        expect!(self, request, Io::default(), Reply::Installed { installed, .. } => installed)
    }

    /// Starts an instance of `record.version` and returns its pid.
    pub async fn start_instance(&self, record: &InstanceRecord, launch: &Launch) -> Result<u32, HostError> {
        let request = Request::StartInstance { record: record.clone(), launch: launch.clone() };
        expect!(self, request, Io::default(), Reply::Pid(pid) => pid)
    }

    /// Stops the instance and starts `record.version` in its place, in one round
    /// trip; returns the new pid.
    pub async fn switch_instance(&self, record: &InstanceRecord, launch: &Launch) -> Result<u32, HostError> {
        let request = Request::SwitchInstance { record: record.clone(), launch: launch.clone() };
        expect!(self, request, Io::default(), Reply::Pid(pid) => pid)
    }

    /// Stops an instance gracefully; returns true when it had to be killed.
    pub async fn stop_instance(&self, id: &str, stop: &Stop) -> Result<bool, HostError> {
        let request = Request::StopInstance { id: id.to_string(), stop: stop.clone() };
        expect!(self, request, Io::default(), Reply::Flag(killed) => killed)
    }

    /// Makes the app's front door on this host exactly `doors`.
    pub async fn open_doors(&self, doors: Vec<proto::Door>) -> Result<(), HostError> {
        expect!(self, Request::OpenDoors { doors }, Io::default(), Reply::Done => ())
    }

    /// The front door's switch: `add` take traffic, `retire` are drained, stopped and
    /// removed.
    pub async fn cutover(&self, add: Vec<String>, retire: Vec<String>, stop: &Stop) -> Result<(), HostError> {
        expect!(self, Request::Cutover { add, retire, stop: stop.clone() }, Io::default(), Reply::Done => ())
    }

    /// Puts the app's front door in maintenance (every request answered 503 with
    /// `message`), or back in service (`None`).
    pub async fn maintenance(&self, message: Option<String>) -> Result<(), HostError> {
        expect!(self, Request::Maintenance { message }, Io::default(), Reply::Done => ())
    }

    /// The instances take `weight` percent of the clients beside the routing table.
    pub async fn canary(&self, ids: Vec<String>, weight: u8, expires: Duration) -> Result<(), HostError> {
        expect!(self, Request::Canary { ids, weight, expires }, Io::default(), Reply::Done => ())
    }

    /// Requests answered by each instance through the front door, and errors among them.
    pub async fn traffic(&self, ids: Vec<String>) -> Result<Vec<(String, u64, u64, u32)>, HostError> {
        expect!(self, Request::Traffic { ids }, Io::default(), Reply::Traffic(counts) => counts)
    }

    /// The instances answer the preview header until they take traffic.
    pub async fn preview(&self, ids: Vec<String>) -> Result<(), HostError> {
        expect!(self, Request::Preview { ids }, Io::default(), Reply::Done => ())
    }

    pub async fn remove_instance(&self, id: &str) -> Result<(), HostError> {
        expect!(self, Request::RemoveInstance { id: id.to_string() }, Io::default(), Reply::Done => ())
    }

    /// Waits until the instance passes its checks (how long it took), or says why it
    /// did not: it exited, the deadline passed, or the host was lost.
    pub async fn wait_healthy(
        &self,
        id: &str,
        pid: u32,
        deadline: Duration,
    ) -> Result<Result<Duration, Failure>, HostError> {
        let request = Request::WaitHealthy { id: id.to_string(), pid, deadline };
        expect!(self, request, Io::default(), Reply::Health(health) => health)
    }

    /// Waits until the instance has stayed up `min_healthy` since it became healthy.
    pub async fn wait_stable(
        &self,
        id: &str,
        pid: u32,
        min_healthy: Duration,
    ) -> Result<Result<(), Failure>, HostError> {
        let request = Request::WaitStable { id: id.to_string(), pid, min_healthy };
        expect!(self, request, Io::default(), Reply::Health(health) => health.map(drop))
    }

    /// Whether the instance on `port` passes its checks right now.
    /// Runs `argv` in instance `id`'s environment and directory with this terminal's
    /// streams (a pseudo-terminal on an SSH host with `tty`); the command's exit code.
    pub async fn exec_in_instance(&self, id: &str, argv: &[String], tty: bool) -> Result<i32, HostError> {
        use std::os::unix::process::ExitStatusExt as _;
        let mut words: Vec<String> =
            ["agent", "exec", "--app-dir", &self.app_dir, "--instance", id, "--"].map(str::to_string).to_vec();
        words.extend(argv.iter().cloned());
        if let Transport::Ssh(ssh) = &self.transport {
            return remote::interactive(self, ssh, &words, tty).await;
        }
        let exe = std::env::current_exe().map_err(|e| self.step_error("finding ferry's executable", &e))?;
        let status = tokio::process::Command::new(exe)
            .args(&words)
            .status()
            .await
            .map_err(|e| self.step_error("running the command", &e))?;
        Ok(status.code().unwrap_or(128 + status.signal().unwrap_or(0)))
    }

    fn step_error(&self, step: &'static str, e: &std::io::Error) -> HostError {
        HostError::Step { host: self.name.clone(), step, message: e.to_string() }
    }

    pub async fn probe(
        &self,
        port: u16,
        ports: &std::collections::BTreeMap<u16, u16>,
        checks: &Checks,
    ) -> Result<bool, HostError> {
        let request = Request::Probe { port, ports: ports.clone(), checks: checks.clone() };
        expect!(self, request, Io::default(), Reply::Flag(passing) => passing)
    }

    /// The last lines of an instance's log; with `skip_checks` (for a failure report),
    /// its health checks' lines left out and secret values redacted.
    pub async fn log_tail(&self, id: &str, lines: usize, skip_checks: bool) -> Result<Vec<String>, HostError> {
        let request = Request::LogTail { id: id.to_string(), lines, skip_checks };
        expect!(self, request, Io::default(), Reply::Lines(lines) => lines)
    }

    /// What an instance's log gained since `from` (see [`Request::LogRead`]).
    pub async fn log_read(&self, id: &str, from: Option<u64>) -> Result<(Vec<String>, u64), HostError> {
        let request = Request::LogRead { id: id.to_string(), from };
        expect!(self, request, Io::default(), Reply::LogChunk { lines, end } => (lines, end))
    }

    pub async fn append_history(&self, line: &str) -> Result<(), HostError> {
        expect!(self, Request::AppendHistory { line: line.to_string() }, Io::default(), Reply::Done => ())
    }

    pub async fn read_history(&self) -> Result<String, HostError> {
        expect!(self, Request::ReadHistory, Io::default(), Reply::Text(text) => text)
    }

    /// The steps after a rollout in one round trip: marks `current`, appends
    /// `history`, prunes `prune`, and, with `token`, releases the lock last. Reports
    /// which steps succeeded.
    pub async fn finish(
        &self,
        peers: Option<Vec<String>>,
        token: Option<&str>,
        current: Option<&str>,
        history: Option<&str>,
        prune: &[String],
    ) -> Result<Finished, HostError> {
        let request = Request::Finish {
            peers,
            token: token.map(str::to_string),
            current: current.map(str::to_string),
            history: history.map(str::to_string),
            prune: prune.to_vec(),
        };
        expect!(self, request, Io::default(), Reply::Finished(done) => done)
    }

    /// Runs the release_command from `releases/<version>`, streaming its output.
    pub async fn run_release_command(
        &self,
        version: &str,
        command: &str,
        env: &Env,
        limit: Option<Duration>,
        on_line: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Exit, HostError> {
        let request = Request::ReleaseCommand {
            version: version.to_string(),
            command: command.to_string(),
            env: env.clone(),
            limit,
        };
        let io = Io { on_line: Some(on_line), ..Io::default() };
        expect!(self, request, io, Reply::Exit(status) => status)
    }

    /// Replaces (or adds) secrets; `lines` are `KEY=base64` and travel on stdin.
    pub async fn secrets_set(&self, keys: &[String], lines: String) -> Result<(), HostError> {
        expect!(self, Request::SecretsSet { keys: keys.to_vec(), lines }, Io::default(), Reply::Done => ())
    }

    /// The secrets file as stored; it travels on the connection's stdout only.
    pub async fn secrets_raw(&self) -> Result<String, HostError> {
        expect!(self, Request::SecretsRaw, Io::default(), Reply::Text(text) => text)
    }

    /// Replaces this host's secrets file with `raw` (sent on stdin).
    pub async fn secrets_replace(&self, raw: String) -> Result<(), HostError> {
        expect!(self, Request::SecretsReplace { raw }, Io::default(), Reply::Done => ())
    }

    /// `(name, digest)` of every secret.
    pub async fn secrets_list(&self) -> Result<Vec<(String, String)>, HostError> {
        expect!(self, Request::SecretsList, Io::default(), Reply::Secrets(list) => list)
    }

    /// A secret's value, or `None`. Only for values ferry itself must use (a
    /// database URL); it travels on the connection's stdout, never a command line.
    pub async fn secret_get(&self, key: &str) -> Result<Option<String>, HostError> {
        expect!(self, Request::SecretGet { key: key.to_string() }, Io::default(), Reply::Secret(value) => value)
    }

    /// Dumps `db` into `backups/` and returns the stored metadata.
    pub async fn backup_create(&self, db: &Database, meta: &Backup, keep: usize) -> Result<Backup, HostError> {
        let request = Request::BackupCreate { db: db.clone(), meta: meta.clone(), keep };
        expect!(self, request, Io::default(), Reply::Backup(backup) => *backup)
    }

    /// Records a dump already uploaded to `backups/<id>.dump`.
    pub async fn backup_register(&self, backup: &Backup, keep: usize) -> Result<(), HostError> {
        expect!(self, Request::BackupRegister { backup: backup.clone(), keep }, Io::default(), Reply::Done => ())
    }

    pub async fn backup_list(&self) -> Result<Vec<Backup>, HostError> {
        expect!(self, Request::BackupList, Io::default(), Reply::Backups(list) => list)
    }

    pub async fn backup_restore(&self, db: &Database, backup: &Backup) -> Result<(), HostError> {
        let request = Request::BackupRestore { db: db.clone(), backup: backup.clone() };
        expect!(self, request, Io::default(), Reply::Done => ())
    }

    pub async fn volume_create(&self, volume: &Volume) -> Result<VolumeCreated, HostError> {
        let request = Request::VolumeCreate { volume: volume.clone() };
        expect!(self, request, Io::default(), Reply::VolumeCreated(created) => created)
    }

    /// Removes a volume; `Err(instance)` when an instance holds it.
    pub async fn volume_destroy(&self, id: &str) -> Result<Result<(), String>, HostError> {
        let request = Request::VolumeDestroy { id: id.to_string() };
        expect!(self, request, Io::default(), Reply::VolumeDestroyed(result) => result)
    }

    /// Binds `instance` to a volume named `name` and returns the data path.
    pub async fn volume_attach(&self, instance: &str, name: &str, destination: &str) -> Result<String, HostError> {
        let request = Request::VolumeAttach {
            instance: instance.to_string(),
            name: name.to_string(),
            destination: destination.to_string(),
        };
        expect!(self, request, Io::default(), Reply::Path(path) => path)
    }

    pub async fn destroy(&self) -> Result<(), HostError> {
        expect!(self, Request::Destroy, Io::default(), Reply::Done => ())
    }
}
