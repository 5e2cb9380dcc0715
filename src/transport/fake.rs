//! A fake transport for unit tests of the engine: a simulated host that answers typed
//! requests from an in-memory model (releases, instances, lock, history) and records
//! every request it was asked. Scripted faults make it fail the way real hosts do: a
//! release that never passes its checks or exits at start, a host that refuses the
//! release or stops answering, a lock taken over. Time goes through `tokio::time`, so
//! tests run with paused time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::health::Failure;
use crate::host::lock::{Held, Holder};
use crate::host::{
    Exit, Finished, Host, HostError, HostState, InstalledRelease, InstanceRecord, InstanceState, Io, LockReply, Reply,
    Request, Runtime,
};

use super::TransportError;

/// What a fake host holds and how it misbehaves.
#[derive(Debug, Default)]
pub struct Model {
    pub releases: Vec<InstalledRelease>,
    pub instances: BTreeMap<String, InstanceState>,
    pub lock: Option<Holder>,
    pub current: Option<String>,
    pub history: Vec<String>,
    /// How long an instance takes to pass its checks.
    pub boot: Duration,
    /// Versions whose instances never pass their checks.
    pub unhealthy: BTreeSet<String>,
    /// Versions whose process exits at start.
    pub exits: BTreeSet<String>,
    /// Versions whose process exits this long after it passes its checks.
    pub dies: BTreeMap<String, Duration>,
    /// Installing a release fails with this message.
    pub refuse_release: Option<String>,
    /// After this many more requests, the host stops answering.
    pub answers_left: Option<usize>,
    /// The host stops answering at the first request of this step.
    pub lose_at: Option<&'static str>,
    /// Refreshing the lock finds it taken over.
    pub lose_lock: bool,
    /// Every request, in order: its step and what it names.
    pub calls: Vec<String>,
    next_pid: u32,
}

#[derive(Debug, Clone)]
pub struct FakeTransport {
    name: String,
    model: Arc<Mutex<Model>>,
}

impl FakeTransport {
    pub fn new(name: &str) -> Self {
        let model = Model { boot: Duration::from_millis(300), next_pid: 100, ..Model::default() };
        Self { name: name.to_string(), model: Arc::new(Mutex::new(model)) }
    }

    pub fn host(&self) -> &str {
        &self.name
    }

    /// The host's model, to script it before a test or look at it after.
    pub fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn connect(&self) -> Result<(), TransportError> {
        if self.model().answers_left == Some(0) {
            return Err(self.gone());
        }
        Ok(())
    }

    /// What a command-level primitive answers: the fake speaks only typed requests.
    pub fn runs_no_commands(&self) -> TransportError {
        TransportError::Connection { host: self.name.clone(), message: "the fake host runs no commands".into() }
    }

    fn gone(&self) -> TransportError {
        TransportError::Connection {
            host: self.name.clone(),
            message: "connection reset (the fake host went away)".into(),
        }
    }

    fn step_error(&self, step: &'static str, message: &str) -> HostError {
        HostError::Step { host: self.name.clone(), step, message: message.to_string() }
    }

    fn state(model: &Model) -> HostState {
        HostState {
            releases: model.releases.clone(),
            instances: model.instances.values().cloned().collect(),
            lock: model.lock.clone().map(|holder| Held { holder: Some(holder), age_secs: 1 }),
            current: model.current.clone(),
            ..HostState::default()
        }
    }

    pub async fn call(&self, _host: &Host, request: Request, _io: Io<'_>) -> Result<Reply, HostError> {
        let step = request.step();
        {
            let mut model = self.model();
            model.calls.push(describe(&request));
            if model.lose_at == Some(step) {
                model.answers_left = Some(0);
            }
            match &mut model.answers_left {
                Some(0) => return Err(self.gone().into()),
                Some(n) => *n -= 1,
                None => {}
            }
        }
        match request {
            Request::WaitHealthy { id, deadline, .. } => Ok(Reply::Health(self.wait_healthy(&id, deadline).await)),
            Request::WaitStable { id, min_healthy, .. } => {
                Ok(Reply::Health(self.wait_stable(&id, min_healthy).await.map(|()| min_healthy)))
            }
            other => self.answer(step, other),
        }
    }

    fn version_of(&self, id: &str) -> String {
        self.model().instances.get(id).map(|i| i.record.version.clone()).unwrap_or_default()
    }

    async fn wait_stable(&self, id: &str, min_healthy: Duration) -> Result<(), Failure> {
        let version = self.version_of(id);
        let dies = self.model().dies.get(&version).copied();
        match dies {
            Some(after) if after < min_healthy => {
                tokio::time::sleep(after).await;
                if let Some(instance) = self.model().instances.get_mut(id) {
                    instance.alive = false;
                }
                Err(Failure::DiedAfterHealthy { after, how: Some("exit 1".into()) })
            }
            _ => {
                tokio::time::sleep(min_healthy).await;
                Ok(())
            }
        }
    }

    async fn wait_healthy(&self, id: &str, deadline: Duration) -> Result<Duration, Failure> {
        let version = self.version_of(id);
        let (exits, unhealthy, boot) = {
            let model = self.model();
            (model.exits.contains(&version), model.unhealthy.contains(&version), model.boot)
        };
        if exits {
            if let Some(instance) = self.model().instances.get_mut(id) {
                instance.alive = false;
            }
            return Err(Failure::Exited { how: Some("exit 3".into()) });
        }
        if unhealthy {
            tokio::time::sleep(deadline).await;
            let last_error = "check `web`: GET /health answered 503 Service Unavailable".to_string();
            return Err(Failure::TimedOut { after: deadline, last_error });
        }
        tokio::time::sleep(boot.min(deadline)).await;
        Ok(boot)
    }

    fn answer(&self, step: &'static str, request: Request) -> Result<Reply, HostError> {
        let mut model = self.model();
        match request {
            Request::Observe => Ok(Reply::State(Box::new(Self::state(&model)))),
            Request::Listening => Ok(Reply::Ports(Vec::new())),
            Request::LockAcquire { holder } => {
                if let Some(held) = model.lock.clone() {
                    return Ok(Reply::Lock(LockReply::Held(Held { holder: Some(held), age_secs: 1 })));
                }
                model.lock = Some(holder);
                Ok(Reply::Lock(LockReply::Acquired(Box::new(Self::state(&model)))))
            }
            Request::LockTakeover { stale, holder } => {
                if model.lock.as_ref().map(|h| h.token.clone()) == stale {
                    model.lock = Some(holder);
                    Ok(Reply::Lock(LockReply::Acquired(Box::new(Self::state(&model)))))
                } else {
                    Ok(Reply::Lock(LockReply::Lost))
                }
            }
            Request::LockRefresh { token } => {
                let ours = !model.lose_lock && model.lock.as_ref().is_some_and(|h| h.token == token);
                Ok(Reply::Flag(ours))
            }
            Request::LockRelease { token } => {
                if token.is_none() || model.lock.as_ref().map(|h| &h.token) == token.as_ref() {
                    model.lock = None;
                }
                Ok(Reply::Done)
            }
            Request::HasArtifact { sha256 } => Ok(Reply::Flag(model.releases.iter().any(|r| r.sha256 == sha256))),
            Request::InstallRelease { sha256, version, .. }
            | Request::ShipRelease { sha256, version, .. }
            | Request::InstallLinked { sha256, version, .. } => {
                if let Some(message) = model.refuse_release.clone() {
                    return Err(self.step_error(step, &message));
                }
                if model.releases.iter().any(|r| r.version == version) {
                    return Ok(Reply::Installed { installed: false, sent: 0 });
                }
                let at = u64::try_from(model.releases.len()).unwrap_or(0) + 1;
                model.releases.push(InstalledRelease { version, sha256, installed_at: at });
                Ok(Reply::Installed { installed: true, sent: 100 })
            }
            Request::StartInstance { record, .. } | Request::SwitchInstance { record, .. } => {
                if !model.releases.iter().any(|r| r.version == record.version) {
                    return Err(self.step_error(step, &format!("release {} is not installed", record.version)));
                }
                model.next_pid += 1;
                let pid = model.next_pid;
                let alive = !model.exits.contains(&record.version);
                model.instances.insert(
                    record.id.clone(),
                    InstanceState {
                        record: InstanceRecord { pid, ..record },
                        alive,
                        runtime: Runtime::default(),
                        routed: false,
                    },
                );
                Ok(Reply::Pid(pid))
            }
            Request::StopInstance { id, .. } => {
                if let Some(instance) = model.instances.get_mut(&id) {
                    instance.alive = false;
                    instance.record.pid = 0;
                }
                Ok(Reply::Flag(false))
            }
            Request::RemoveInstance { id } => {
                model.instances.remove(&id);
                Ok(Reply::Done)
            }
            Request::Cutover { retire, .. } => {
                for id in retire {
                    model.instances.remove(&id);
                }
                Ok(Reply::Done)
            }
            Request::Probe { port, .. } => {
                let passing = model
                    .instances
                    .values()
                    .any(|i| i.alive && i.record.port == port && !model.unhealthy.contains(&i.record.version));
                Ok(Reply::Flag(passing))
            }
            Request::LogTail { id, .. } => Ok(Reply::Lines(vec![format!("the log of {id}")])),
            Request::LogRead { .. } => Ok(Reply::LogChunk { lines: Vec::new(), end: 0 }),
            Request::AppendHistory { line } => {
                model.history.push(line);
                Ok(Reply::Done)
            }
            Request::ReadHistory => Ok(Reply::Text(model.history.iter().flat_map(|l| [l.as_str(), "\n"]).collect())),
            Request::Finish { token, current, history, prune, .. } => {
                let mut done =
                    Finished { current: current.is_some(), history: history.is_some(), ..Finished::default() };
                if current.is_some() {
                    model.current = current;
                }
                model.history.extend(history);
                for version in prune {
                    model.releases.retain(|r| r.version != version);
                    done.pruned.push(version);
                }
                if token.is_some() && model.lock.as_ref().map(|h| &h.token) == token.as_ref() {
                    model.lock = None;
                }
                Ok(Reply::Finished(done))
            }
            Request::ReleaseCommand { .. } => Ok(Reply::Exit(Exit { code: Some(0), signal: None, timed_out: false })),
            Request::SecretsRaw => Ok(Reply::Text(String::new())),
            Request::SecretsReplace { .. }
            | Request::OpenDoors { .. }
            | Request::Preview { .. }
            | Request::Maintenance { .. }
            | Request::Canary { .. } => Ok(Reply::Done),
            Request::Traffic { ids } => Ok(Reply::Traffic(ids.into_iter().map(|id| (id, 0, 0, 1)).collect())),
            Request::VolumeAttach { name, .. } => Ok(Reply::Path(format!("/volumes/{name}"))),
            other => Err(self.step_error(step, &format!("the fake host does not simulate {other:?}"))),
        }
    }
}

/// A request as recorded: its step and the instance or version it names.
fn describe(request: &Request) -> String {
    let what = match request {
        Request::StartInstance { record, .. } | Request::SwitchInstance { record, .. } => {
            format!(" {} {}", record.id, record.version)
        }
        Request::WaitHealthy { id, .. }
        | Request::WaitStable { id, .. }
        | Request::StopInstance { id, .. }
        | Request::RemoveInstance { id } => format!(" {id}"),
        Request::InstallRelease { version, .. } | Request::ShipRelease { version, .. } => format!(" {version}"),
        Request::Finish { current, prune, .. } => format!(" current={current:?} prune={prune:?}"),
        _ => String::new(),
    };
    format!("{}{what}", request.step())
}
