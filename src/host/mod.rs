//! The on-host layout (DESIGN.md) as operations over a [`Transport`]: observe state,
//! install a release, start/stop instances, read logs, keep history, hold the lock.
//! The same functions serve the local target and SSH hosts. This module performs what
//! it is asked; deciding what to do belongs to `plan`/`deploy`.

pub mod lock;
mod scripts;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::transport::{quote, Cmd, Output, Transport, TransportError};

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

/// An instance as recorded in `instances/<id>/instance.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstanceRecord {
    pub id: String,
    pub region: String,
    pub host: String,
    pub version: String,
    pub port: u16,
    pub created_at: u64,
    pub started_at: u64,
    #[serde(default)]
    pub pid: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstanceState {
    #[serde(flatten)]
    pub record: InstanceRecord,
    pub alive: bool,
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
pub enum VolumeCreated {
    Created,
    /// Not enough room: the filesystem's free KiB.
    NoSpace(u64),
}

/// Everything ferry reads from a host in one round trip.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostState {
    pub releases: Vec<InstalledRelease>,
    pub instances: Vec<InstanceState>,
    pub lock: Option<lock::Held>,
    pub current: Option<String>,
    pub volumes: Vec<Volume>,
    /// sha256 of the secrets file, when there is one (to spot hosts that lack them).
    #[serde(skip)]
    pub secrets: Option<String>,
    /// TCP ports something listens on (on the machine, not just this app); read only
    /// when a new instance needs a port ([`Host::listening`]).
    #[serde(skip)]
    pub listening: Vec<u16>,
}

impl HostState {
    pub fn has_release(&self, version: &str) -> bool {
        self.releases.iter().any(|r| r.version == version)
    }
}

/// How often an instance on this machine is checked for having exited.
const LOCAL_WATCH_EVERY: Duration = Duration::from_millis(20);

/// Whether `pid` is a live process on this machine (a zombie counts as gone, as in
/// the host scripts).
fn local_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with(['Z', 'X'])))
}

/// STOP's signal name (without `SIG`) and timeout in whole seconds (rounded up).
fn stop_args(signal: &str, timeout: Duration) -> (&str, String) {
    let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    (signal.trim_start_matches("SIG"), secs.to_string())
}

/// Runs `op` on every host at once; each host's name and result, in the hosts' order.
/// For steps that are independent per host (recording history, marking a release
/// current, releasing a lock): over SSH each is a round trip, and hosts in a row
/// would add them up.
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

impl Host {
    /// The address other machines use for this host: loopback for the local target,
    /// the host part of `user@host:port` for SSH.
    pub fn address(&self) -> String {
        match &self.transport {
            Transport::Local(_) => "127.0.0.1".to_string(),
            Transport::Ssh(t) => {
                let spec = t.host();
                let host = spec.rsplit_once('@').map_or(spec, |(_, h)| h);
                match host.rsplit_once(':') {
                    Some((h, port)) if port.parse::<u16>().is_ok() => h.to_string(),
                    _ => host.to_string(),
                }
            }
        }
    }

    fn cmd(&self, body: &str) -> Cmd {
        Cmd::script(&scripts::full(body)).arg(&self.app_dir)
    }

    async fn run(&self, step: &'static str, cmd: &Cmd) -> Result<Output, HostError> {
        let out = self.transport.exec(cmd).await?;
        if out.success() {
            Ok(out)
        } else {
            Err(self.step_error(step, &out))
        }
    }

    fn step_error(&self, step: &'static str, out: &Output) -> HostError {
        let stderr = out.stderr_str();
        let message = if stderr.is_empty() { format!("exited with {}", out.status) } else { stderr };
        HostError::Step { host: self.name.clone(), step, message }
    }

    pub async fn observe(&self) -> Result<HostState, HostError> {
        let out = self.run("reading state", &self.cmd(scripts::OBSERVE)).await?;
        Ok(parse_observation(&out.stdout_str()))
    }

    /// The TCP ports something listens on, on the whole machine.
    pub async fn listening(&self) -> Result<Vec<u16>, HostError> {
        let out = self.run("listing listening ports", &self.cmd(scripts::LISTENING)).await?;
        Ok(parse_observation(&out.stdout_str()).listening)
    }

    /// Whether `artifacts/<sha>.tar.gz` is already on the host (creating the layout).
    pub async fn has_artifact(&self, sha256: &str) -> Result<bool, HostError> {
        let out = self.transport.exec(&self.cmd(scripts::HAS_ARTIFACT).arg(sha256)).await?;
        Ok(out.success())
    }

    pub fn artifact_path(&self, sha256: &str) -> String {
        format!("{}/artifacts/{sha256}.tar.gz", self.app_dir)
    }

    /// Unpacks the artifact into `releases/<version>` and verifies it against
    /// `sums` (sha256sum lines). Returns false when it was already installed.
    pub async fn install_release(&self, sha256: &str, version: &str, sums: &str) -> Result<bool, HostError> {
        let cmd = self
            .cmd(scripts::INSTALL_RELEASE)
            .args([sha256, version, &now_ms().to_string()])
            .stdin(sums.as_bytes().to_vec());
        let out = self.run("unpacking the release", &cmd).await?;
        Ok(out.stdout_str().trim() == "installed")
    }

    /// Streams the artifact at `path` (or, with `raw`, its plain tar stream) into
    /// `releases/<version>` on the host, unpacking it as it arrives, and verifies it
    /// against `sums`. Returns whether it was installed (false: already there) and
    /// the bytes sent.
    #[allow(clippy::too_many_arguments)]
    pub async fn ship_release(
        &self,
        path: &std::path::Path,
        raw: bool,
        sha256: &str,
        size: u64,
        version: &str,
        sums: &str,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(bool, u64), HostError> {
        let mut input = format!("{}\n", sums.len()).into_bytes();
        input.extend_from_slice(sums.as_bytes());
        let format = if raw { "tar" } else { "gz" };
        let cmd = self
            .cmd(scripts::INSTALL_STREAM)
            .args([sha256, version, &now_ms().to_string(), &size.to_string(), format])
            .stdin(input);
        let (out, sent) = self.transport.exec_with_file(&cmd, path, progress).await?;
        if !out.success() {
            return Err(self.step_error("unpacking the release", &out));
        }
        let installed = out.stdout_str().trim() == "installed";
        Ok((installed, if installed { sent } else { 0 }))
    }

    /// Installs the release from `source`, another host on this same machine that
    /// holds it verified, as hard links. Returns false when it was already there.
    pub async fn install_linked(&self, source: &Host, sha256: &str, version: &str) -> Result<bool, HostError> {
        let cmd = self.cmd(scripts::INSTALL_LINKED).args([&source.app_dir, sha256, version, &now_ms().to_string()]);
        let out = self.run("linking the release", &cmd).await?;
        Ok(out.stdout_str().trim() == "installed")
    }

    /// Starts an instance of `record.version` and returns its pid.
    pub async fn start_instance(
        &self,
        record: &InstanceRecord,
        start: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<u32, HostError> {
        let cmd = self.start_cmd(scripts::START, &[], record, start, env)?;
        let out = self.run("starting instance", &cmd).await?;
        self.started_pid("starting instance", &out)
    }

    /// Stops the instance (as [`Host::stop_instance`]) and starts `record.version` in
    /// its place, in one round trip; returns the new pid.
    pub async fn switch_instance(
        &self,
        signal: &str,
        timeout: Duration,
        record: &InstanceRecord,
        start: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<u32, HostError> {
        let (sig, secs) = stop_args(signal, timeout);
        let cmd = self.start_cmd(scripts::SWITCH, &[record.id.as_str(), sig, &secs], record, start, env)?;
        let out = self.run("replacing instance", &cmd).await?;
        self.started_pid("replacing instance", &out)
    }

    fn start_cmd(
        &self,
        script: &str,
        before: &[&str],
        record: &InstanceRecord,
        start: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<Cmd, HostError> {
        let json = serde_json::to_string(&InstanceRecord { pid: 0, ..record.clone() }).map_err(|e| {
            HostError::Step { host: self.name.clone(), step: "starting instance", message: e.to_string() }
        })?;
        let prefix = json.trim_end_matches('}').trim_end_matches(",\"pid\":0").to_string();
        Ok(self
            .cmd(script)
            .args(before.iter().copied())
            .args([record.id.as_str(), record.version.as_str(), &start_line(start), prefix.as_str()])
            .arg(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string())
            .stdin(env_file(env)))
    }

    /// The pid a start printed last (a stop before it may have printed `killed`).
    fn started_pid(&self, step: &'static str, out: &Output) -> Result<u32, HostError> {
        let text = out.stdout_str();
        text.lines().last().unwrap_or_default().trim().parse().map_err(|_| HostError::Step {
            host: self.name.clone(),
            step,
            message: format!("unexpected output `{}`", text.trim()),
        })
    }

    /// Stops an instance gracefully; returns true when it had to be killed.
    pub async fn stop_instance(&self, id: &str, signal: &str, timeout: Duration) -> Result<bool, HostError> {
        let (sig, secs) = stop_args(signal, timeout);
        let cmd = self.cmd(scripts::STOP).args([id, sig, &secs]);
        let out = self.run("stopping instance", &cmd).await?;
        Ok(out.stdout_str().contains("killed"))
    }

    pub async fn remove_instance(&self, id: &str) -> Result<(), HostError> {
        self.run("removing instance", &self.cmd(scripts::REMOVE_INSTANCE).arg(id)).await?;
        Ok(())
    }

    /// Resolves once process `pid` has exited (true), or after `limit` (false).
    pub async fn wait_exit(&self, pid: u32, limit: Duration) -> Result<bool, HostError> {
        if self.transport.is_local() {
            // This machine's /proc, read in-process: no shell ticking per instance.
            let deadline = tokio::time::Instant::now() + limit;
            while local_alive(pid) {
                if tokio::time::Instant::now() >= deadline {
                    return Ok(false);
                }
                tokio::time::sleep(LOCAL_WATCH_EVERY).await;
            }
            return Ok(true);
        }
        let ticks = (limit.as_millis() / 50).max(1);
        let cmd = self.cmd(scripts::WATCH_EXIT).args([pid.to_string(), ticks.to_string()]);
        let out = self.run("watching instance", &cmd).await?;
        Ok(out.stdout_str().contains("exited"))
    }

    pub async fn log_tail(&self, id: &str, lines: usize) -> Result<Vec<String>, HostError> {
        let out =
            self.run("reading log", &self.cmd(scripts::LOG_TAIL).args([id.to_string(), lines.to_string()])).await?;
        Ok(out.stdout_str().lines().map(str::to_string).collect())
    }

    pub async fn append_history(&self, line: &str) -> Result<(), HostError> {
        self.run("recording history", &self.cmd(scripts::APPEND_HISTORY).arg(line)).await?;
        Ok(())
    }

    pub async fn read_history(&self) -> Result<String, HostError> {
        Ok(self.run("reading history", &self.cmd(scripts::READ_HISTORY)).await?.stdout_str())
    }

    /// The steps after a rollout in one round trip (see `scripts::FINISH`): marks
    /// `current`, appends `history`, prunes `prune`, and, with `token`, releases the
    /// lock last. Reports which steps succeeded.
    pub async fn finish(
        &self,
        token: Option<&str>,
        current: Option<&str>,
        history: Option<&str>,
        prune: &[String],
    ) -> Result<Finished, HostError> {
        let cmd = self
            .cmd(scripts::FINISH)
            .args([token.unwrap_or(""), current.unwrap_or(""), history.unwrap_or("")])
            .args(prune.iter().cloned());
        let out = self.transport.exec(&cmd).await?;
        let text = out.stdout_str();
        let mut done = Finished::default();
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("pruned", version)) => done.pruned.push(version.to_string()),
                _ if line == "current" => done.current = true,
                _ if line == "history" => done.history = true,
                _ => {}
            }
        }
        if !out.success() {
            done.error = Some(self.step_error("finishing", &out).to_string());
        }
        Ok(done)
    }

    /// Runs the release_command from `releases/<version>`, streaming its output.
    pub async fn run_release_command(
        &self,
        version: &str,
        command: &str,
        env: &BTreeMap<String, String>,
        limit: Option<Duration>,
        on_line: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<std::process::ExitStatus, HostError> {
        let secs = limit.map_or(0, |l| l.as_secs().max(1));
        let cmd = self.cmd(scripts::RELEASE_COMMAND).args([version, command, &secs.to_string()]).stdin(env_file(env));
        Ok(self.transport.exec_streaming(&cmd, on_line).await?)
    }

    /// Replaces (or adds) secrets; `lines` are `KEY=base64` and travel on stdin.
    pub async fn secrets_set(&self, keys: &[String], lines: String) -> Result<(), HostError> {
        let cmd = self.cmd(scripts::SECRETS_SET).args(keys.iter().cloned()).stdin(lines.into_bytes());
        self.run("storing secrets", &cmd).await?;
        Ok(())
    }

    /// The secrets file as stored; it travels on the connection's stdout only.
    pub async fn secrets_raw(&self) -> Result<String, HostError> {
        Ok(self.run("reading secrets", &self.cmd(scripts::SECRETS_RAW)).await?.stdout_str())
    }

    /// Replaces this host's secrets file with `raw` (sent on stdin).
    pub async fn secrets_replace(&self, raw: String) -> Result<(), HostError> {
        self.run("copying secrets", &self.cmd(scripts::SECRETS_REPLACE).stdin(raw.into_bytes())).await?;
        Ok(())
    }

    /// `(name, digest)` of every secret.
    pub async fn secrets_list(&self) -> Result<Vec<(String, String)>, HostError> {
        let out = self.run("listing secrets", &self.cmd(scripts::SECRETS_LIST)).await?;
        Ok(out
            .stdout_str()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, d)| (k.to_string(), d.to_string()))
            .collect())
    }

    /// A secret's value, or `None`. Only for values ferry itself must use (a
    /// database URL); it travels on the connection's stdout, never a command line.
    pub async fn secret_get(&self, key: &str) -> Result<Option<String>, HostError> {
        use base64::Engine as _;
        let out = self.run("reading a secret", &self.cmd(scripts::SECRET_GET).arg(key)).await?;
        let encoded = out.stdout_str();
        let encoded = encoded.trim();
        if encoded.is_empty() {
            return Ok(None);
        }
        let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|_| HostError::Step {
            host: self.name.clone(),
            step: "reading a secret",
            message: format!("secret `{key}` is not stored as expected"),
        })?;
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// Dumps `db` into `backups/` and returns the stored metadata.
    pub async fn backup_create(
        &self,
        db: &crate::postgres::Database,
        meta: &crate::postgres::Backup,
        keep: usize,
    ) -> Result<crate::postgres::Backup, HostError> {
        let json = serde_json::to_string(meta).unwrap_or_default();
        let prefix = json.trim_end_matches('}').trim_end_matches(",\"size\":0,\"sha256\":\"\"").to_string();
        let cmd = self
            .cmd(scripts::BACKUP_CREATE)
            .args([
                meta.id.clone(),
                db.host.clone(),
                db.port.to_string(),
                db.user.clone(),
                db.name.clone(),
                keep.to_string(),
                prefix,
            ])
            .stdin(db.pgpass());
        let out = self.run("taking the backup", &cmd).await?;
        serde_json::from_str(out.stdout_str().trim()).map_err(|e| HostError::Step {
            host: self.name.clone(),
            step: "taking the backup",
            message: format!("unexpected metadata: {e}"),
        })
    }

    /// Records a dump already uploaded to `backups/<id>.dump`.
    pub async fn backup_register(&self, backup: &crate::postgres::Backup, keep: usize) -> Result<(), HostError> {
        let json = serde_json::to_string(backup).unwrap_or_default();
        let cmd = self.cmd(scripts::BACKUP_REGISTER).args([backup.id.clone(), json, keep.to_string()]);
        self.run("recording the backup", &cmd).await?;
        Ok(())
    }

    pub async fn backup_list(&self) -> Result<Vec<crate::postgres::Backup>, HostError> {
        let out = self.run("listing backups", &self.cmd(scripts::BACKUP_LIST)).await?;
        let mut list: Vec<crate::postgres::Backup> =
            out.stdout_str().lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(list)
    }

    pub async fn backup_restore(
        &self,
        db: &crate::postgres::Database,
        backup: &crate::postgres::Backup,
    ) -> Result<(), HostError> {
        let cmd = self
            .cmd(scripts::BACKUP_RESTORE)
            .args([
                backup.id.clone(),
                db.host.clone(),
                db.port.to_string(),
                db.user.clone(),
                db.name.clone(),
                backup.sha256.clone(),
            ])
            .stdin(db.pgpass());
        self.run("restoring the backup", &cmd).await?;
        Ok(())
    }

    pub async fn volume_create(&self, volume: &Volume) -> Result<VolumeCreated, HostError> {
        let json = serde_json::to_string(volume).unwrap_or_default();
        let prefix = json.trim_end_matches('}').trim_end_matches(",\"attached\":null").to_string();
        let cmd = self.cmd(scripts::VOLUME_CREATE).args([prefix, volume.id.clone(), volume.size_gb.to_string()]);
        let out = self.run("creating a volume", &cmd).await?;
        let text = out.stdout_str();
        Ok(match text.trim().strip_prefix("nospace ") {
            Some(free) => VolumeCreated::NoSpace(free.trim().parse().unwrap_or(0)),
            None => VolumeCreated::Created,
        })
    }

    /// Removes a volume; `Err(instance)` when an instance holds it.
    pub async fn volume_destroy(&self, id: &str) -> Result<Result<(), String>, HostError> {
        let out = self.run("destroying a volume", &self.cmd(scripts::VOLUME_DESTROY).arg(id)).await?;
        let text = out.stdout_str();
        Ok(match text.trim().strip_prefix("attached ") {
            Some(instance) => Err(instance.trim().to_string()),
            None => Ok(()),
        })
    }

    /// Binds `instance` to a volume named `name` and returns the data path.
    pub async fn volume_attach(&self, instance: &str, name: &str, destination: &str) -> Result<String, HostError> {
        let out = self
            .run("attaching a volume", &self.cmd(scripts::VOLUME_ATTACH).args([instance, name, destination]))
            .await?;
        Ok(out.stdout_str().trim().to_string())
    }

    pub async fn destroy(&self) -> Result<(), HostError> {
        self.run("removing the app", &self.cmd(scripts::DESTROY)).await?;
        Ok(())
    }
}

/// What [`Host::finish`] did.
#[derive(Debug, Default)]
pub struct Finished {
    pub current: bool,
    pub history: bool,
    pub pruned: Vec<String>,
    /// The script itself failed (its stderr).
    pub error: Option<String>,
}

/// Shell builtins and reserved words: a start command beginning with one is not a
/// program that `exec` could run.
const SHELL_WORDS: &[&str] = &[
    "!", ".", ":", "[", "{", "}", "alias", "bg", "break", "case", "cd", "command", "continue", "do", "done", "elif",
    "else", "esac", "eval", "exec", "exit", "export", "false", "fc", "fg", "fi", "for", "getopts", "hash", "if", "in",
    "jobs", "kill", "local", "newgrp", "pwd", "read", "readonly", "return", "set", "shift", "source", "test", "then",
    "time", "times", "trap", "true", "type", "ulimit", "umask", "unalias", "unset", "until", "wait", "while",
];

/// The line an instance's shell evals to become the start command: `exec` of the
/// command itself when it is a program and plain words (the app is then the process
/// ferry records and signals, with no shell in between), else `exec sh -c` of it.
fn start_line(start: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || " -_./=:@,+%".contains(c);
    let first = start.split_whitespace().next().unwrap_or_default();
    if start.chars().all(plain) && !first.is_empty() && !first.contains('=') && !SHELL_WORDS.contains(&first) {
        format!("exec {start}")
    } else {
        format!("exec sh -c {}", quote(start))
    }
}

/// Variables ferry sets itself; nothing a user configures overrides them.
pub const OWN_VARS: &[&str] = &[
    "PORT",
    "FLY_APP_NAME",
    "FLY_REGION",
    "PRIMARY_REGION",
    "FERRY_INSTANCE_ID",
    "FLY_MACHINE_ID",
    "FLY_PROCESS_GROUP",
    "RELEASE_VERSION",
    "RELEASE_COMMAND",
];

/// The env file an instance sources: `export K='v'` lines, every value quoted.
/// It travels on stdin, never on a command line, because it carries secrets.
pub fn env_file(env: &BTreeMap<String, String>) -> Vec<u8> {
    let mut text = String::new();
    // ferry's own variables (set last) win over secrets, which win over `[env]`.
    let (own, user): (Vec<_>, Vec<_>) = env.iter().partition(|(k, _)| OWN_VARS.contains(&k.as_str()));
    for (key, value) in user {
        text.push_str("export ");
        text.push_str(key);
        text.push('=');
        text.push_str(&quote(value));
        text.push('\n');
    }
    text.push_str("ferry_secrets \"$@\"\n");
    for (key, value) in own {
        text.push_str("export ");
        text.push_str(key);
        text.push('=');
        text.push_str(&quote(value));
        text.push('\n');
    }
    text.into_bytes()
}

fn parse_observation(text: &str) -> HostState {
    let mut state = HostState::default();
    for line in text.lines() {
        let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
        match tag {
            "R" => {
                if let Ok(release) = serde_json::from_str(rest) {
                    state.releases.push(release);
                }
            }
            "I" => {
                let (alive, json) = rest.split_once(' ').unwrap_or(("0", rest));
                if let Ok(record) = serde_json::from_str::<InstanceRecord>(json) {
                    state.instances.push(InstanceState { alive: alive == "1" && record.pid != 0, record });
                }
            }
            "L" => {
                let (age, json) = rest.split_once(' ').unwrap_or(("0", "{}"));
                state.lock = Some(lock::Held::parse(age, json));
            }
            "C" => state.current = Some(rest.trim().to_string()),
            "S" => state.secrets = Some(rest.trim().to_string()),
            "V" => {
                if let Ok(volume) = serde_json::from_str(rest) {
                    state.volumes.push(volume);
                }
            }
            "P" => state.listening = rest.split_whitespace().filter_map(|p| p.parse().ok()).collect(),
            _ => {}
        }
    }
    state.releases.sort_by_key(|r| r.installed_at);
    state.instances.sort_by(|a, b| (a.record.created_at, &a.record.id).cmp(&(b.record.created_at, &b.record.id)));
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_start_commands_are_execed_and_the_rest_go_through_sh() {
        assert_eq!(start_line("bin/hello start --port=80"), "exec bin/hello start --port=80");
        assert_eq!(start_line("PORT=1 bin/start"), "exec sh -c 'PORT=1 bin/start'");
        assert_eq!(start_line("cd app && bin/start"), "exec sh -c 'cd app && bin/start'");
        assert_eq!(start_line("bin/start $(id)"), "exec sh -c 'bin/start $(id)'");
        assert_eq!(start_line("exec bin/server"), "exec sh -c 'exec bin/server'");
        assert_eq!(start_line(". ./run.sh"), "exec sh -c '. ./run.sh'");
        assert_eq!(start_line("ulimit -n 4096"), "exec sh -c 'ulimit -n 4096'");
        assert_eq!(start_line(""), "exec sh -c ''");
    }

    #[test]
    fn env_file_quotes_values() {
        let env = BTreeMap::from([("A".to_string(), "it's $(x)".to_string())]);
        assert_eq!(String::from_utf8(env_file(&env)).unwrap(), "export A='it'\\''s $(x)'\nferry_secrets \"$@\"\n");
    }

    #[test]
    fn observation_is_parsed_and_sorted() {
        let text = concat!(
            "R {\"version\":\"v2\",\"sha256\":\"bb\",\"installed_at\":20}\n",
            "R {\"version\":\"v1\",\"sha256\":\"aa\",\"installed_at\":10}\n",
            "I 1 {\"id\":\"b\",\"region\":\"syd\",\"host\":\"h\",\"version\":\"v2\",\"port\":1,\"created_at\":2,\"started_at\":2,\"pid\":7}\n",
            "I 0 {\"id\":\"a\",\"region\":\"syd\",\"host\":\"h\",\"version\":\"v1\",\"port\":2,\"created_at\":1,\"started_at\":1,\"pid\":0}\n",
            "C v2\n"
        );
        let state = parse_observation(text);
        assert_eq!(state.releases[0].version, "v1");
        assert_eq!(state.instances[0].record.id, "a");
        assert!(!state.instances[0].alive);
        assert!(state.instances[1].alive);
        assert_eq!(state.current.as_deref(), Some("v2"));
    }
}
