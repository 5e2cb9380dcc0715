//! What the agent does for each request: one whole, idempotent step on one app's
//! directory or instance. The agent never decides a rollout; it carries out the step
//! it is asked and says how it went.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncReadExt, AsyncWrite};

use crate::host::{AgentInfo, Exit, Reply, Request};

use super::files::{listening_ports, App};
use super::install;
use super::paths::{expand_home, Paths};
use super::procs::{Ended, Reaper};
use super::proxy::{FrontDoor, Sockets};
use super::supervisor::Supervisor;
use super::wire::{self, Answer, Call};

pub struct Agent {
    pub paths: Paths,
    pub supervisor: Supervisor,
    pub doors: FrontDoor,
    reaper: Reaper,
    info: AgentInfo,
    /// One volume attachment at a time (two instances must not take one volume).
    attaching: tokio::sync::Mutex<()>,
    /// App directories whose instances were loaded from disk.
    loaded: Mutex<Vec<PathBuf>>,
}

/// Bytes per chunk handed from the socket to an install.
const CHUNK: usize = 256 * 1024;

impl Agent {
    pub fn new(paths: Paths, supervisor: Supervisor, reaper: Reaper, info: AgentInfo, sockets: Sockets) -> Self {
        let doors = FrontDoor::new(paths.clone(), supervisor.clone(), sockets);
        Self {
            paths,
            supervisor,
            doors,
            reaper,
            info,
            attaching: tokio::sync::Mutex::new(()),
            loaded: Mutex::new(Vec::new()),
        }
    }

    /// What the host holds for `app`, with what its front door routes.
    fn observe(&self, app: &App, own_lock: bool) -> crate::host::HostState {
        let mut state = app.observe(|r| self.supervisor.state(app, r), own_lock);
        let routing = self.doors.routing(app);
        state.routes = routing.is_some();
        for instance in &mut state.instances {
            instance.routed = routing.as_ref().is_some_and(|r| r.contains(&instance.record.id));
        }
        state.doors = self.doors.addresses(app);
        state.maintenance = self.doors.in_maintenance(app);
        state
    }

    /// Whether any app directory is known to this account's agent.
    pub fn has_apps(&self) -> bool {
        std::fs::read_to_string(self.paths.apps()).is_ok_and(|apps| apps.lines().any(|l| Path::new(l).is_dir()))
    }

    /// Takes over the instances of every app this account's agents served before.
    pub async fn load_apps(&self) {
        let apps = std::fs::read_to_string(self.paths.apps()).unwrap_or_default();
        for dir in apps.lines().filter(|l| !l.is_empty()) {
            let app = App::new(PathBuf::from(dir));
            if app.dir.is_dir() {
                self.ensure_loaded(&app).await;
            }
        }
    }

    /// Loads an app's instances the first time the agent meets it, and remembers it
    /// for the next agent.
    async fn ensure_loaded(&self, app: &App) {
        {
            let mut loaded = self.loaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if loaded.contains(&app.dir) {
                return;
            }
            loaded.push(app.dir.clone());
        }
        self.remember(&app.dir);
        self.supervisor.load(app).await;
        self.doors.load(app);
    }

    fn remember(&self, dir: &Path) {
        let known = std::fs::read_to_string(self.paths.apps()).unwrap_or_default();
        let line = dir.display().to_string();
        if known.lines().any(|l| l == line) {
            return;
        }
        let kept: String = known
            .lines()
            .filter(|l| Path::new(l).is_dir())
            .chain(std::iter::once(line.as_str()))
            .flat_map(|l| [l, "\n"])
            .collect();
        let _ = super::files::write_atomic(&self.paths.apps(), kept.as_bytes(), 0o600);
    }

    fn forget(&self, dir: &Path) {
        let known = std::fs::read_to_string(self.paths.apps()).unwrap_or_default();
        let kept: String = known.lines().filter(|l| Path::new(l) != dir).flat_map(|l| [l, "\n"]).collect();
        let _ = super::files::write_atomic(&self.paths.apps(), kept.as_bytes(), 0o600);
        self.loaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|d| d != dir);
    }

    /// Carries out one call; `read` holds the input that follows it, `write` takes the
    /// lines streamed before the answer.
    pub async fn handle<R, W>(&self, call: Call, read: &mut R, write: &mut W) -> Result<Reply, String>
    where
        R: AsyncBufRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        let app = App::new(expand_home(&call.app_dir));
        match &call.request {
            Request::Hello => return Ok(Reply::Agent(self.info.clone())),
            Request::Handover => return Ok(Reply::Done),
            _ => {}
        }
        if call.app_dir.is_empty() {
            return Err("no app directory named".into());
        }
        if !matches!(call.request, Request::Destroy) && app.dir.exists() {
            self.ensure_loaded(&app).await;
        }
        let io = |e: std::io::Error| e.to_string();
        let path = call.path.clone();
        let mut request = call.request;
        if let (Request::StartInstance { launch, .. } | Request::SwitchInstance { launch, .. }, Some(path)) =
            (&mut request, &path)
        {
            launch.env.0.entry("PATH".into()).or_insert_with(|| path.clone());
        }
        Ok(match request {
            Request::Hello | Request::Handover => Reply::Done,
            Request::Observe => {
                self.supervisor.repair(&app);
                let mut state = self.observe(&app, false);
                state.boot = super::boot::recorded(&self.paths);
                Reply::State(Box::new(state))
            }
            Request::Listening => Reply::Ports(listening_ports()),
            Request::LockAcquire { holder } => {
                Reply::Lock(app.lock_acquire(&holder, |own| self.observe(&app, own)).map_err(io)?)
            }
            Request::LockTakeover { stale, holder } => {
                Reply::Lock(app.lock_takeover(stale.as_deref(), &holder, |own| self.observe(&app, own)).map_err(io)?)
            }
            Request::LockRefresh { token } => Reply::Flag(app.lock_refresh(&token)),
            Request::LockRelease { token } => {
                app.lock_release(token.as_deref()).map_err(io)?;
                Reply::Done
            }
            Request::HasArtifact { sha256 } => Reply::Flag(install::has_artifact(&app, &sha256).map_err(io)?),
            Request::InstallRelease { sha256, version, sums } => {
                let installed = blocking(move || install::from_artifact(&app, &sha256, &version, &sums)).await?;
                Reply::Installed { installed, sent: 0 }
            }
            Request::ShipRelease { sha256, version, size, raw, sums } => {
                let sent = call.input;
                let installed = receive_into(read, call.input, move |input| {
                    let stream =
                        crate::host::proto::Parcel { sha256: &sha256, version: &version, size, raw, sums: &sums };
                    install::from_stream(&app, input, &stream)
                })
                .await?;
                Reply::Installed { installed, sent: if installed { sent } else { 0 } }
            }
            Request::InstallLinked { source, sha256, version } => {
                let source = App::new(expand_home(&source));
                let installed = blocking(move || install::linked(&app, &source, &sha256, &version)).await?;
                Reply::Installed { installed, sent: 0 }
            }
            Request::StartInstance { record, launch } => {
                let id = record.id.clone();
                let pid = self.supervisor.start(&app, record, launch, false).await?;
                self.doors.resume(&app, &id);
                Reply::Pid(pid)
            }
            Request::SwitchInstance { record, launch } => {
                let id = record.id.clone();
                let stop = launch.stop.timeout;
                self.doors.quiesce(&app, &id, stop).await;
                let started = self.supervisor.start(&app, record, launch, true).await;
                self.doors.resume(&app, &id);
                Reply::Pid(started?)
            }
            Request::StopInstance { id, stop } => {
                // Stopped in place, it keeps its place in the table (a removal takes it out).
                self.doors.quiesce(&app, &id, stop.timeout).await;
                let stopped = self.supervisor.stop(&app, &id, &stop).await;
                self.supervisor.reap_epmd(None);
                Reply::Flag(stopped)
            }
            Request::RemoveInstance { id } => {
                self.doors.retire(&app, &id, Duration::from_secs(5)).await;
                self.supervisor.remove(&app, &id).await?;
                self.supervisor.reap_epmd(None);
                Reply::Done
            }
            Request::OpenDoors { doors } => {
                self.doors.open(&app, &doors)?;
                Reply::Done
            }
            Request::Cutover { add, retire, stop } => {
                // An error means the switch was not made; once it is, the retired
                // instances take no traffic whatever happens to them next (one that
                // cannot be removed is an orphan the next operation stops).
                for backend in self.doors.switch(&app, &add, &retire)? {
                    backend.drain(stop.timeout).await;
                }
                for id in &retire {
                    self.supervisor.stop(&app, id, &stop).await;
                    if let Err(e) = self.supervisor.remove(&app, id).await {
                        super::daemon::log(&self.paths, &format!("removing retired instance {id}: {e}"));
                    }
                }
                Reply::Done
            }
            Request::Canary { ids, weight, expires } => {
                self.doors.canary(&app, &ids, weight, expires)?;
                Reply::Done
            }
            Request::Traffic { ids } => Reply::Traffic(self.doors.traffic(&app, &ids)),
            Request::Maintenance { message } => {
                self.doors.maintenance(&app, message).map_err(io)?;
                Reply::Done
            }
            Request::Preview { ids } => {
                self.doors.preview(&app, &ids)?;
                Reply::Done
            }
            Request::WaitHealthy { id, pid, deadline } => {
                Reply::Health(self.supervisor.wait_healthy(&app, &id, pid, deadline).await)
            }
            Request::WaitStable { id, pid, min_healthy } => {
                Reply::Health(self.supervisor.wait_stable(&app, &id, pid, min_healthy).await.map(|()| min_healthy))
            }
            Request::Probe { port, ports, checks } => Reply::Flag(
                checks.check_ports(std::net::SocketAddr::from(([127, 0, 0, 1], port)), &ports).await.is_ok(),
            ),
            Request::LogRead { id, from } => {
                let (lines, end) = Supervisor::log_read(&app, &id, from);
                Reply::LogChunk { lines, end }
            }
            Request::LogTail { id, lines, skip_checks } => {
                Reply::Lines(Supervisor::log_tail(&app, &id, lines, skip_checks))
            }
            Request::AppendHistory { line } => {
                app.append_history(&line).map_err(io)?;
                Reply::Done
            }
            Request::ReadHistory => Reply::Text(app.read_history()),
            Request::Finish { peers, token, current, history, prune } => {
                let paths = self.paths.clone();
                Reply::Finished(
                    blocking(move || {
                        if let Some(peers) = peers {
                            let text = peers.iter().fold(String::new(), |text, p| text + p + "\n");
                            if let Err(e) = super::files::write_atomic(&app.peers_file(), text.as_bytes(), 0o644) {
                                super::daemon::log(&paths, &format!("writing the peers file: {e}"));
                            }
                        }
                        if let Some(version) = current.as_deref() {
                            // Before the lock goes: the next operation may revert to it.
                            if let Err(e) = super::supervisor::record_as_ran(&app, version) {
                                super::daemon::log(&paths, &format!("recording how {version} runs: {e}"));
                            }
                        }
                        Ok(app.finish(token.as_deref(), current.as_deref(), history.as_deref(), &prune))
                    })
                    .await?,
                )
            }
            Request::ReleaseCommand { version, command, env, limit } => {
                let mut env = env.0;
                if let Some(path) = &path {
                    env.entry("PATH".into()).or_insert_with(|| path.clone());
                }
                let job = super::release_command::Job {
                    reaper: &self.reaper,
                    exe: self.supervisor.exe(),
                    app: &app,
                    version: &version,
                    command: &command,
                    env: &env,
                    limit,
                };
                Reply::Exit(super::release_command::run(&job, write).await?)
            }
            Request::SecretsSet { keys, lines } => {
                app.secrets_set(&keys, &lines).map_err(io)?;
                Reply::Done
            }
            Request::SecretsRaw => Reply::Text(app.secrets_raw()),
            Request::SecretsReplace { raw } => {
                app.secrets_replace(&raw).map_err(io)?;
                Reply::Done
            }
            Request::SecretsList => Reply::Secrets(app.secrets_list()),
            Request::SecretGet { key } => Reply::Secret(app.secret_get(&key)),
            Request::BackupCreate { db, meta, keep } => Reply::Backup(Box::new(
                super::backups::create(&self.reaper, &app, &db, meta, keep, path.as_deref()).await?,
            )),
            Request::BackupRegister { backup, keep } => {
                super::backups::register(&app, &backup, keep).map_err(io)?;
                Reply::Done
            }
            Request::BackupList => Reply::Backups(super::backups::list(&app)),
            Request::BackupRestore { db, backup } => {
                super::backups::restore(&self.reaper, &app, &db, &backup, path.as_deref()).await?;
                Reply::Done
            }
            Request::VolumeCreate { volume } => Reply::VolumeCreated(app.volume_create(&volume).map_err(io)?),
            Request::VolumeDestroy { id } => Reply::VolumeDestroyed(app.volume_destroy(&id).map_err(io)?),
            Request::VolumeAttach { instance, name, destination } => {
                let _one = self.attaching.lock().await;
                Reply::Path(app.volume_attach(&instance, &name, &destination).map_err(io)?)
            }
            Request::Destroy => {
                self.doors.close(&app);
                self.supervisor.forget_app(&app).await;
                self.supervisor.reap_epmd(Some(&app.dir));
                let dir = app.dir.clone();
                blocking(move || app.destroy().map_err(|e| e.to_string())).await?;
                self.forget(&dir);
                Reply::Done
            }
        })
    }
}

/// Runs `work` on a blocking thread.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, String> + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(work).await.map_err(|e| format!("the agent's worker failed: {e}"))?
}

/// Feeds the `size` bytes of input that follow a call to `work`, on a blocking thread,
/// in chunks, while they arrive.
async fn receive_into<R, T>(
    read: &mut R,
    size: u64,
    work: impl FnOnce(&mut dyn Read) -> Result<T, String> + Send + 'static,
) -> Result<T, String>
where
    R: AsyncBufRead + Unpin + Send,
    T: Send + 'static,
{
    // Bounded: the socket is read no faster than the install writes.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    let worker = tokio::task::spawn_blocking(move || {
        let mut input = ChunkReader { rx, current: Vec::new(), at: 0 };
        work(&mut input)
    });
    let mut left = size;
    let mut limited = read.take(size);
    while left > 0 {
        let mut chunk = vec![0u8; CHUNK.min(usize::try_from(left).unwrap_or(CHUNK))];
        let n = limited.read(&mut chunk).await.map_err(|e| format!("receiving the release: {e}"))?;
        if n == 0 {
            break;
        }
        chunk.truncate(n);
        left -= n as u64;
        if tx.send(chunk).await.is_err() {
            // The install stopped reading (it failed, or found the release already there).
            break;
        }
    }
    drop(tx);
    worker.await.map_err(|e| format!("the agent's worker failed: {e}"))?
}

/// A `Read` over chunks arriving on a channel.
struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.current = chunk;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// How a helper process ended, as an [`Exit`].
pub fn exit_of(ended: Ended, timed_out: bool) -> Exit {
    match ended {
        Ended::Code(code) => Exit { code: Some(code), signal: None, timed_out },
        Ended::Signal(signal) => Exit { code: None, signal: Some(signal), timed_out },
        Ended::Unknown => Exit { code: None, signal: None, timed_out },
    }
}

/// Environment for a helper command: a clean base plus `extra`.
pub fn helper_env(extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut env = super::supervisor::base_env();
    env.extend(extra.clone());
    env
}

/// Sends a streamed line to the caller.
pub async fn send_line<W: AsyncWrite + Unpin>(write: &mut W, line: String) {
    let _ = wire::send(write, &Answer::Line(line)).await;
}
