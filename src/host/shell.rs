//! Carries out a [`Request`] on a real machine: one of the on-host scripts (see
//! `scripts`) run through the transport, its output read back into a [`Reply`].
//! Health waits and probes run from here against the instance's port (through an SSH
//! forward on remote hosts).

use std::time::Duration;

use crate::health::{Checks, Failure};
use crate::transport::{quote, Cmd, Output};

use super::lock::{Held, Holder};
use super::proto::{Env, Io, LockReply, Reply, Request, Stop};
use super::{lock, scripts, Finished, Host, HostError, HostState, InstanceRecord, InstanceState, VolumeCreated};

/// How often an instance on this machine is checked for having exited.
const LOCAL_WATCH_EVERY: Duration = Duration::from_millis(20);

pub async fn execute(host: &Host, request: Request, io: Io<'_>) -> Result<Reply, HostError> {
    let step = request.step();
    match request {
        Request::Observe => Ok(Reply::State(Box::new(parse_observation(
            &host.run(step, &cmd(host, scripts::OBSERVE)).await?.stdout_str(),
        )))),
        Request::Listening => {
            let out = host.run(step, &cmd(host, scripts::LISTENING)).await?;
            Ok(Reply::Ports(parse_observation(&out.stdout_str()).listening))
        }
        Request::LockAcquire { holder } => lock_acquire(host, step, &holder).await,
        Request::LockTakeover { stale, holder } => {
            let json = holder_json(&holder);
            let out =
                host.run(step, &cmd(host, scripts::LOCK_TAKEOVER).args([stale.unwrap_or_default(), json])).await?;
            Ok(Reply::Lock(acquired(&out.stdout_str()).map_or(LockReply::Lost, |s| LockReply::Acquired(Box::new(s)))))
        }
        Request::LockRefresh { token } => {
            let out = host.run(step, &cmd(host, scripts::LOCK_REFRESH).arg(token)).await?;
            Ok(Reply::Flag(!out.stdout_str().contains("lost")))
        }
        Request::LockRelease { token } => {
            host.run(step, &cmd(host, scripts::LOCK_RELEASE).arg(token.unwrap_or_default())).await?;
            Ok(Reply::Done)
        }
        Request::HasArtifact { sha256 } => {
            let out = host.transport.exec(&cmd(host, scripts::HAS_ARTIFACT).arg(sha256)).await?;
            Ok(Reply::Flag(out.success()))
        }
        Request::InstallRelease { sha256, version, sums } => {
            let c =
                cmd(host, scripts::INSTALL_RELEASE).args([sha256, version, super::now_ms().to_string()]).stdin(sums);
            let out = host.run(step, &c).await?;
            Ok(Reply::Installed { installed: out.stdout_str().trim() == "installed", sent: 0 })
        }
        Request::ShipRelease { sha256, version, size, raw, sums } => {
            ship(host, step, io, (sha256, version, size, raw, sums)).await
        }
        Request::InstallLinked { source, sha256, version } => {
            let c = cmd(host, scripts::INSTALL_LINKED).args([source, sha256, version, super::now_ms().to_string()]);
            let out = host.run(step, &c).await?;
            Ok(Reply::Installed { installed: out.stdout_str().trim() == "installed", sent: 0 })
        }
        Request::StartInstance { record, start, env } => {
            let c = start_cmd(host, scripts::START, &[], &record, &start, &env)?;
            let out = host.run(step, &c).await?;
            started_pid(host, step, &out).map(Reply::Pid)
        }
        Request::SwitchInstance { stop, record, start, env } => {
            let (sig, secs) = stop_args(&stop);
            let c = start_cmd(host, scripts::SWITCH, &[record.id.as_str(), sig, &secs], &record, &start, &env)?;
            let out = host.run(step, &c).await?;
            started_pid(host, step, &out).map(Reply::Pid)
        }
        Request::StopInstance { id, stop } => {
            let (sig, secs) = stop_args(&stop);
            let out = host.run(step, &cmd(host, scripts::STOP).args([id.as_str(), sig, &secs])).await?;
            Ok(Reply::Flag(out.stdout_str().contains("killed")))
        }
        Request::RemoveInstance { id } => {
            host.run(step, &cmd(host, scripts::REMOVE_INSTANCE).arg(id)).await?;
            Ok(Reply::Done)
        }
        Request::WaitHealthy { record, pid, checks, deadline } => {
            wait_healthy(host, &record, pid, &checks, deadline).await
        }
        Request::Probe { port, checks } => Ok(Reply::Flag(probe(host, port, &checks).await)),
        Request::LogTail { id, lines } => {
            let out = host.run(step, &cmd(host, scripts::LOG_TAIL).args([id, lines.to_string()])).await?;
            Ok(Reply::Lines(out.stdout_str().lines().map(str::to_string).collect()))
        }
        Request::AppendHistory { line } => {
            host.run(step, &cmd(host, scripts::APPEND_HISTORY).arg(line)).await?;
            Ok(Reply::Done)
        }
        Request::ReadHistory => Ok(Reply::Text(host.run(step, &cmd(host, scripts::READ_HISTORY)).await?.stdout_str())),
        Request::Finish { token, current, history, prune } => {
            let c = cmd(host, scripts::FINISH)
                .args([token.unwrap_or_default(), current.unwrap_or_default(), history.unwrap_or_default()])
                .args(prune);
            let out = host.transport.exec(&c).await?;
            let mut done = parse_finished(&out.stdout_str());
            if !out.success() {
                done.error = Some(host.step_error(step, &out).to_string());
            }
            Ok(Reply::Finished(done))
        }
        Request::ReleaseCommand { version, command, env, limit } => {
            let secs = limit.map_or(0, |l| l.as_secs().max(1));
            let c =
                cmd(host, scripts::RELEASE_COMMAND).args([version, command, secs.to_string()]).stdin(env_file(&env));
            let on_line = io.on_line.unwrap_or(&|_| {});
            Ok(Reply::Exit(host.transport.exec_streaming(&c, on_line).await?))
        }
        Request::SecretsSet { keys, lines } => {
            host.run(step, &cmd(host, scripts::SECRETS_SET).args(keys).stdin(lines.into_bytes())).await?;
            Ok(Reply::Done)
        }
        Request::SecretsRaw => Ok(Reply::Text(host.run(step, &cmd(host, scripts::SECRETS_RAW)).await?.stdout_str())),
        Request::SecretsReplace { raw } => {
            host.run(step, &cmd(host, scripts::SECRETS_REPLACE).stdin(raw.into_bytes())).await?;
            Ok(Reply::Done)
        }
        Request::SecretsList => {
            let out = host.run(step, &cmd(host, scripts::SECRETS_LIST)).await?;
            let list = out
                .stdout_str()
                .lines()
                .filter_map(|l| l.split_once(' '))
                .map(|(k, d)| (k.to_string(), d.to_string()))
                .collect();
            Ok(Reply::Secrets(list))
        }
        Request::SecretGet { key } => secret_get(host, step, &key).await,
        Request::BackupCreate { db, meta, keep } => {
            let json = serde_json::to_string(&meta).unwrap_or_default();
            let prefix = json.trim_end_matches('}').trim_end_matches(",\"size\":0,\"sha256\":\"\"").to_string();
            let c = cmd(host, scripts::BACKUP_CREATE)
                .args([meta.id.clone(), db.host.clone(), db.port.to_string(), db.user.clone(), db.name.clone()])
                .args([keep.to_string(), prefix])
                .stdin(db.pgpass());
            let out = host.run(step, &c).await?;
            let backup = serde_json::from_str(out.stdout_str().trim()).map_err(|e| HostError::Step {
                host: host.name.clone(),
                step,
                message: format!("unexpected metadata: {e}"),
            })?;
            Ok(Reply::Backup(Box::new(backup)))
        }
        Request::BackupRegister { backup, keep } => {
            let json = serde_json::to_string(&backup).unwrap_or_default();
            host.run(step, &cmd(host, scripts::BACKUP_REGISTER).args([backup.id.clone(), json, keep.to_string()]))
                .await?;
            Ok(Reply::Done)
        }
        Request::BackupList => {
            let out = host.run(step, &cmd(host, scripts::BACKUP_LIST)).await?;
            let mut list: Vec<crate::postgres::Backup> =
                out.stdout_str().lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
            list.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(Reply::Backups(list))
        }
        Request::BackupRestore { db, backup } => {
            let c = cmd(host, scripts::BACKUP_RESTORE)
                .args([backup.id.clone(), db.host.clone(), db.port.to_string(), db.user.clone(), db.name.clone()])
                .arg(backup.sha256.clone())
                .stdin(db.pgpass());
            host.run(step, &c).await?;
            Ok(Reply::Done)
        }
        Request::VolumeCreate { volume } => {
            let json = serde_json::to_string(&volume).unwrap_or_default();
            let prefix = json.trim_end_matches('}').trim_end_matches(",\"attached\":null").to_string();
            let c = cmd(host, scripts::VOLUME_CREATE).args([prefix, volume.id.clone(), volume.size_gb.to_string()]);
            let text = host.run(step, &c).await?.stdout_str();
            Ok(Reply::VolumeCreated(match text.trim().strip_prefix("nospace ") {
                Some(free) => VolumeCreated::NoSpace(free.trim().parse().unwrap_or(0)),
                None => VolumeCreated::Created,
            }))
        }
        Request::VolumeDestroy { id } => {
            let text = host.run(step, &cmd(host, scripts::VOLUME_DESTROY).arg(id)).await?.stdout_str();
            Ok(Reply::VolumeDestroyed(match text.trim().strip_prefix("attached ") {
                Some(instance) => Err(instance.trim().to_string()),
                None => Ok(()),
            }))
        }
        Request::VolumeAttach { instance, name, destination } => {
            let out = host.run(step, &cmd(host, scripts::VOLUME_ATTACH).args([instance, name, destination])).await?;
            Ok(Reply::Path(out.stdout_str().trim().to_string()))
        }
        Request::Destroy => {
            host.run(step, &cmd(host, scripts::DESTROY)).await?;
            Ok(Reply::Done)
        }
    }
}

fn cmd(host: &Host, body: &str) -> Cmd {
    Cmd::script(&scripts::full(body)).arg(&host.app_dir)
}

impl Host {
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
}

fn holder_json(holder: &Holder) -> String {
    serde_json::to_string(holder).unwrap_or_default()
}

async fn lock_acquire(host: &Host, step: &'static str, holder: &Holder) -> Result<Reply, HostError> {
    let out = host.run(step, &cmd(host, scripts::LOCK_ACQUIRE).arg(holder_json(holder))).await?;
    let text = out.stdout_str();
    if let Some(state) = acquired(&text) {
        return Ok(Reply::Lock(LockReply::Acquired(Box::new(state))));
    }
    let text = text.trim();
    let rest = text.strip_prefix("held ").unwrap_or("0 {}");
    let (age, json) = rest.split_once(' ').unwrap_or((rest, "{}"));
    Ok(Reply::Lock(LockReply::Held(Held::parse(age, json))))
}

/// `acquired` followed by the observation: the state read under the lock.
fn acquired(text: &str) -> Option<HostState> {
    let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
    (first.trim() == "acquired").then(|| parse_observation(rest))
}

async fn ship(
    host: &Host,
    step: &'static str,
    io: Io<'_>,
    (sha256, version, size, raw, sums): (String, String, u64, bool, String),
) -> Result<Reply, HostError> {
    let Some(path) = io.file else {
        return Err(HostError::Step { host: host.name.clone(), step, message: "no release file to send".into() });
    };
    let mut input = format!("{}\n", sums.len()).into_bytes();
    input.extend_from_slice(sums.as_bytes());
    let format = if raw { "tar" } else { "gz" };
    let c = cmd(host, scripts::INSTALL_STREAM)
        .args([sha256, version, super::now_ms().to_string(), size.to_string(), format.to_string()])
        .stdin(input);
    let (out, sent) = host.transport.exec_with_file(&c, path, io.progress.unwrap_or(&|_| {})).await?;
    if !out.success() {
        return Err(host.step_error(step, &out));
    }
    let installed = out.stdout_str().trim() == "installed";
    Ok(Reply::Installed { installed, sent: if installed { sent } else { 0 } })
}

async fn secret_get(host: &Host, step: &'static str, key: &str) -> Result<Reply, HostError> {
    use base64::Engine as _;
    let out = host.run(step, &cmd(host, scripts::SECRET_GET).arg(key)).await?;
    let encoded = out.stdout_str();
    let encoded = encoded.trim();
    if encoded.is_empty() {
        return Ok(Reply::Secret(None));
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|_| HostError::Step {
        host: host.name.clone(),
        step,
        message: format!("secret `{key}` is not stored as expected"),
    })?;
    Ok(Reply::Secret(Some(String::from_utf8_lossy(&bytes).into_owned())))
}

/// Waits for the instance's checks through the port (forwarded from a remote host),
/// failing fast when its process exits.
async fn wait_healthy(
    host: &Host,
    record: &InstanceRecord,
    pid: u32,
    checks: &Checks,
    deadline: Duration,
) -> Result<Reply, HostError> {
    let addr = match host.transport.forward(record.port).await {
        Ok(addr) => addr,
        Err(e) => return Ok(Reply::Health(Err(Failure::Lost(format!("reaching port {}: {e}", record.port))))),
    };
    let exited = async { wait_exit(host, pid, deadline + Duration::from_secs(5)).await.map_err(|e| e.to_string()) };
    Ok(Reply::Health(checks.wait_healthy(addr, !host.transport.is_local(), deadline, exited).await))
}

async fn probe(host: &Host, port: u16, checks: &Checks) -> bool {
    match host.transport.forward(port).await {
        Ok(addr) => checks.check(addr, !host.transport.is_local()).await.is_ok(),
        Err(_) => false,
    }
}

/// Resolves once process `pid` has exited (true), or after `limit` (false).
async fn wait_exit(host: &Host, pid: u32, limit: Duration) -> Result<bool, HostError> {
    if host.transport.is_local() {
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
    let c = cmd(host, scripts::WATCH_EXIT).args([pid.to_string(), ticks.to_string()]);
    let out = host.run("watching instance", &c).await?;
    Ok(out.stdout_str().contains("exited"))
}

/// Whether `pid` is a live process on this machine (a zombie counts as gone, as in
/// the host scripts).
fn local_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with(['Z', 'X'])))
}

/// STOP's signal name (without `SIG`) and timeout in whole seconds (rounded up).
fn stop_args(stop: &Stop) -> (&str, String) {
    let secs = stop.timeout.as_secs() + u64::from(stop.timeout.subsec_nanos() > 0);
    (stop.signal.trim_start_matches("SIG"), secs.to_string())
}

fn start_cmd(
    host: &Host,
    script: &str,
    before: &[&str],
    record: &InstanceRecord,
    start: &str,
    env: &Env,
) -> Result<Cmd, HostError> {
    let json = serde_json::to_string(&InstanceRecord { pid: 0, ..record.clone() }).map_err(|e| HostError::Step {
        host: host.name.clone(),
        step: "starting instance",
        message: e.to_string(),
    })?;
    let prefix = json.trim_end_matches('}').trim_end_matches(",\"pid\":0").to_string();
    Ok(cmd(host, script)
        .args(before.iter().copied())
        .args([record.id.as_str(), record.version.as_str(), &start_line(start), prefix.as_str()])
        .arg(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string())
        .stdin(env_file(env)))
}

/// The pid a start printed last (a stop before it may have printed `killed`).
fn started_pid(host: &Host, step: &'static str, out: &Output) -> Result<u32, HostError> {
    let text = out.stdout_str();
    text.lines().last().unwrap_or_default().trim().parse().map_err(|_| HostError::Step {
        host: host.name.clone(),
        step,
        message: format!("unexpected output `{}`", text.trim()),
    })
}

fn parse_finished(text: &str) -> Finished {
    let mut done = Finished::default();
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("pruned", version)) => done.pruned.push(version.to_string()),
            _ if line == "current" => done.current = true,
            _ if line == "history" => done.history = true,
            _ => {}
        }
    }
    done
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
fn env_file(env: &Env) -> Vec<u8> {
    let mut text = String::new();
    // ferry's own variables (set last) win over secrets, which win over `[env]`.
    let (own, user): (Vec<_>, Vec<_>) = env.0.iter().partition(|(k, _)| OWN_VARS.contains(&k.as_str()));
    for (key, value) in user {
        push_export(&mut text, key, value);
    }
    text.push_str("ferry_secrets \"$@\"\n");
    for (key, value) in own {
        push_export(&mut text, key, value);
    }
    text.into_bytes()
}

fn push_export(text: &mut String, key: &str, value: &str) {
    text.push_str("export ");
    text.push_str(key);
    text.push('=');
    text.push_str(&quote(value));
    text.push('\n');
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
    use std::collections::BTreeMap;

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
        let env = Env(BTreeMap::from([("A".to_string(), "it's $(x)".to_string())]));
        assert_eq!(String::from_utf8(env_file(&env)).unwrap(), "export A='it'\\''s $(x)'\nferry_secrets \"$@\"\n");
    }

    #[test]
    fn env_debug_shows_names_only() {
        let env = Env(BTreeMap::from([("TOKEN".to_string(), "hunter2".to_string())]));
        let shown = format!("{env:?}");
        assert!(shown.contains("TOKEN") && !shown.contains("hunter2"), "{shown}");
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

    #[test]
    fn finishing_reports_each_step_that_succeeded() {
        let done = parse_finished("current\npruned v1\nhistory\n");
        assert!(done.current && done.history);
        assert_eq!(done.pruned, ["v1"]);
    }
}
