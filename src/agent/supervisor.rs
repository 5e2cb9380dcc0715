//! The instances of every app the agent serves. The agent is the parent (and child
//! subreaper) of each instance's process, which runs in its own session and process
//! group, from its own writable directory, with its output appended to its log. Its
//! exit is known at once; whatever it started goes with it when it stops (found by
//! the mark in their environment, daemons that left its session included); a start
//! command that forks and exits is caught and what it left is stopped. While an
//! instance runs its checks run at their interval; while it starts, tightly. Its
//! `[[restart]]` policy brings it back with exponential backoff once it has been
//! healthy. An instance found running by a new agent (after an upgrade, or the old
//! one killed) is adopted by pid and start time, never by pid alone.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{BufRead, Seek, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::health::Failure;
use crate::host::proto::{Launch, RestartPolicy};
use crate::host::{now_ms, Health, InstanceRecord, InstanceState, Runtime, Stop};

use super::files::{App, Snapshot};
use super::procs::{self, Ended, Reaper};

/// The first pause before a restart; doubled each time, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// An instance that stays up this long has its restart count cleared.
const SETTLED: Duration = Duration::from_mins(1);
/// A log larger than this is rotated to `log.1` (one old log is kept); the agent's
/// environment may lower it (`FERRY_AGENT_LOG_LIMIT`, in bytes).
pub const LOG_LIMIT: u64 = 10 << 20;

fn log_limit() -> u64 {
    static LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| std::env::var("FERRY_AGENT_LOG_LIMIT").ok().and_then(|v| v.parse().ok()).unwrap_or(LOG_LIMIT))
}
/// How often an instance's log size is looked at.
const LOG_EVERY: Duration = Duration::from_secs(1);
/// How often an adopted instance (not the agent's child) is looked at.
const ADOPTED_POLL: Duration = Duration::from_millis(200);

/// What an instance runs, kept beside its record (0600: its environment holds what
/// the deploy sent) so the agent can start it again after a crash or a reboot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub record: InstanceRecord,
    pub launch: Launch,
    /// Whether it should be running: false once stopped, or once it exited and its
    /// restart policy declined to start it again (so the next agent does not either).
    pub running: bool,
    /// Restarts by policy since an operation last started it (so `retries` holds
    /// across agents).
    #[serde(default)]
    pub restarts: u32,
    /// The boot during which it exited and its restart policy declined to start it
    /// again: it stays down for the rest of that boot (a newer agent leaves it so), and
    /// comes back after a reboot like every instance that should run.
    #[serde(default)]
    pub down_in_boot: Option<String>,
    /// How its last process ended.
    #[serde(default)]
    pub last_exit: Option<String>,
    /// The secrets it started with (absent in specs of older agents: the file then).
    #[serde(default)]
    pub secrets: Option<Snapshot>,
}

/// How a release's instances ran when it was last made current on this host: what a
/// revert to it starts again, so a bad secret, `[env]` or start command of the release
/// that failed never reaches the one put back. Kept in `launches/<version>.json` (0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AsRan {
    /// Without per-instance variables (those come from the revert's own launch).
    pub launch: Launch,
    pub secrets: Snapshot,
    pub config: crate::host::Identity,
}

/// Whether a variable belongs to one instance (ferry's own, its volumes, where its
/// primary is) rather than to the release's configuration.
fn per_instance(key: &str) -> bool {
    OWN_VARS.contains(&key) || key.starts_with("FERRY_")
}

/// Records how `version` runs here, for each process group from its newest instance
/// on it; a host without one keeps no record of that group.
pub fn record_as_ran(app: &App, version: &str) -> std::io::Result<()> {
    let Ok(entries) = fs::read_dir(app.dir.join("instances")) else { return Ok(()) };
    let mut newest: std::collections::BTreeMap<String, Spec> = std::collections::BTreeMap::new();
    for spec in entries.flatten().filter_map(|e| read_spec(app, &e.file_name().to_string_lossy())) {
        if !spec.running || spec.record.version != version {
            continue;
        }
        let group = spec.record.group.clone();
        if newest.get(&group).is_none_or(|n| n.record.started_at < spec.record.started_at) {
            newest.insert(group, spec);
        }
    }
    // Nothing runs it here (in a group): an older record would describe another time.
    app.remove_as_ran(version)?;
    for (group, spec) in newest {
        let mut launch = spec.launch;
        launch.env.0.retain(|k, _| !per_instance(k));
        launch.as_ran = None;
        let secrets = spec.secrets.unwrap_or_else(|| app.secrets_snapshot());
        let as_ran = AsRan { launch, secrets, config: spec.record.config };
        let file = app.as_ran_file(version, &group);
        fs::create_dir_all(file.parent().unwrap_or(&app.dir))?;
        let json = serde_json::to_vec(&as_ran).map_err(std::io::Error::other)?;
        super::files::write_atomic(&file, &json, 0o600)?;
    }
    Ok(())
}

/// What a revert to `launch.as_ran` starts for an instance of `group`: the recorded
/// launch with this one's per-instance variables, its secrets and its configuration;
/// `None` without a record.
fn as_ran(app: &App, launch: &Launch, group: &str) -> Option<(Launch, Snapshot, crate::host::Identity)> {
    let version = launch.as_ran.as_deref()?;
    let recorded: AsRan = serde_json::from_str(&fs::read_to_string(app.as_ran_file(version, group)).ok()?).ok()?;
    let mut env = recorded.launch.env.0;
    env.extend(launch.env.0.iter().filter(|(k, _)| per_instance(k)).map(|(k, v)| (k.clone(), v.clone())));
    let launch = Launch { env: crate::host::Env(env), as_ran: launch.as_ran.clone(), ..recorded.launch };
    Some((launch, recorded.secrets, recorded.config))
}

/// Who starts a process, which decides what its restart policy covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Starter {
    /// A deploy, restart or scale: its first process failing is the operation's to
    /// handle.
    Operation,
    /// The restart policy, after a crash.
    Policy,
    /// The agent at boot, bringing back what should run.
    Boot,
}

/// Where an instance is in its life, as waiters see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Healthy { after: Duration },
    Exited { how: String },
    Stopped,
}

#[derive(Debug, Clone)]
pub struct Status {
    pub phase: Phase,
    pub pid: u32,
    pub runtime: Runtime,
    /// When the current process started (agent clock).
    pub since: Option<Instant>,
    /// When it first passed its checks (agent clock).
    pub healthy_at: Option<Instant>,
    /// Its record as the agent last wrote it: what puts a lost or broken record file
    /// back while the instance runs.
    pub record: Option<InstanceRecord>,
}

impl Default for Status {
    fn default() -> Self {
        Self { phase: Phase::Stopped, pid: 0, runtime: Runtime::default(), since: None, healthy_at: None, record: None }
    }
}

/// One instance the agent knows.
struct Slot {
    app: App,
    id: String,
    status: watch::Sender<Status>,
    /// One operation at a time on the instance (start, stop, a restart by policy).
    busy: tokio::sync::Mutex<Control>,
}

#[derive(Default)]
struct Control {
    spec: Option<Spec>,
    /// Each start of a process is a new incarnation; a monitor or restart of an old one
    /// does nothing.
    incarnation: u64,
    backoff: Duration,
    /// Whether the restart policy covers the current process: it was started by the
    /// policy itself (a restart, a boot) or adopted, or it has passed its checks. The
    /// first process of a deploy that never became healthy is the deploy's failure to
    /// handle, not the policy's.
    supervised: bool,
    monitor: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

struct Inner {
    /// `ferry agent launch` is run through this executable.
    exe: PathBuf,
    reaper: Reaper,
    slots: Mutex<HashMap<(PathBuf, String), Arc<Slot>>>,
    /// Set when the agent leaves: exits are no longer answered (no restart, nothing
    /// recorded), so what the next agent finds is what should run.
    frozen: std::sync::atomic::AtomicBool,
    /// A BEAM instance was started or adopted: only then is there an epmd to stop
    /// (see [`Supervisor::reap_epmd`]), so other apps never pay for looking.
    beam: std::sync::atomic::AtomicBool,
}

impl Supervisor {
    pub fn new(exe: PathBuf, reaper: Reaper) -> Self {
        Self {
            inner: Arc::new(Inner {
                exe,
                reaper,
                slots: Mutex::new(HashMap::new()),
                beam: std::sync::atomic::AtomicBool::new(false),
                frozen: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Stops answering exits: the agent is leaving (see [`Inner::frozen`]).
    pub fn freeze(&self) {
        self.inner.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn frozen(&self) -> bool {
        self.inner.frozen.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The executable instances and helpers are launched through.
    pub fn exe(&self) -> &Path {
        &self.inner.exe
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<(PathBuf, String), Arc<Slot>>> {
        self.inner.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn slot(&self, app: &App, id: &str) -> Arc<Slot> {
        let key = (app.dir.clone(), id.to_string());
        Arc::clone(self.slots().entry(key).or_insert_with(|| {
            Arc::new(Slot {
                app: app.clone(),
                id: id.to_string(),
                status: watch::channel(Status::default()).0,
                busy: tokio::sync::Mutex::new(Control::default()),
            })
        }))
    }

    fn existing(&self, app: &App, id: &str) -> Option<Arc<Slot>> {
        self.slots().get(&(app.dir.clone(), id.to_string())).cloned()
    }

    /// The instance's status as it changes (`None`: the agent knows no such instance).
    pub fn watch(&self, app: &App, id: &str) -> Option<watch::Receiver<Status>> {
        self.existing(app, id).map(|slot| slot.status.subscribe())
    }

    /// Whether any instance of any app is meant to run.
    pub fn serves_any(&self) -> bool {
        self.slots().values().any(|s| !matches!(s.status.borrow().phase, Phase::Stopped))
    }

    /// Writes back the record of every running instance of `app` whose record file is
    /// gone or unreadable: an instance ferry would otherwise forget while it serves.
    pub fn repair(&self, app: &App) {
        let (records, _) = app.records();
        let slots: Vec<Arc<Slot>> =
            self.slots().iter().filter(|((dir, _), _)| dir == &app.dir).map(|(_, s)| Arc::clone(s)).collect();
        for slot in slots {
            let status = slot.status.borrow().clone();
            let running = matches!(status.phase, Phase::Starting | Phase::Healthy { .. });
            if let (true, Some(record)) = (running, status.record) {
                if !records.iter().any(|r| r.id == record.id) {
                    let _ = app.write_record(&record);
                }
            }
        }
    }

    /// What the agent knows of the instance of `record`: alive, and its runtime.
    pub fn state(&self, app: &App, record: &InstanceRecord) -> InstanceState {
        let Some(slot) = self.existing(app, &record.id) else {
            return InstanceState { record: record.clone(), alive: false, runtime: Runtime::default(), routed: false };
        };
        let status = slot.status.borrow().clone();
        let alive = matches!(status.phase, Phase::Starting | Phase::Healthy { .. }) && status.pid != 0;
        let mut record = record.clone();
        if alive {
            record.pid = status.pid;
        }
        InstanceState { record, alive, runtime: status.runtime, routed: false }
    }

    /// Takes over the instances of `app` found on disk that this agent does not know
    /// yet: a live process (same pid and start time) is adopted; one that should run
    /// but is gone (a reboot, a crash while no agent watched) is started again.
    pub async fn load(&self, app: &App) {
        let (records, _) = app.records();
        for record in records {
            if self.existing(app, &record.id).is_some() {
                continue;
            }
            let Some(spec) = read_spec(app, &record.id) else { continue };
            let slot = self.slot(app, &record.id);
            let mut control = slot.busy.lock().await;
            let boot = procs::boot_id();
            // Records from before boot ids were kept have none: pid and start time decide.
            let this_boot = record.boot.is_empty() || record.boot == boot;
            let settled = now_ms().saturating_sub(record.started_at) >= u64::try_from(SETTLED.as_millis()).unwrap_or(0);
            let restarts = if this_boot && !settled { spec.restarts } else { 0 };
            slot.status.send_modify(|s| {
                s.runtime.restarts = restarts;
                s.runtime.last_exit.clone_from(&spec.last_exit);
            });
            let live = record.pid != 0 && this_boot && procs::same_process(record.pid, record.starttime);
            // A record that lost track of its process (a pid written wrong, a record
            // restored from elsewhere): the process carrying its mark that leads its
            // own session is the instance.
            let found = if live || !spec.running { None } else { procs::session_leader(&procs::marked(&record.id)) };
            let down = spec.down_in_boot.as_deref() == Some(boot.as_str());
            if live {
                self.adopt(&slot, &mut control, spec, &record);
            } else if let Some(pid) = found {
                let record = InstanceRecord {
                    pid,
                    starttime: procs::starttime(pid).unwrap_or(0),
                    boot: procs::boot_id(),
                    ..record
                };
                let _ = app.write_record(&record);
                let spec = Spec { record: record.clone(), ..spec };
                let _ = write_spec(app, &spec);
                self.adopt(&slot, &mut control, spec, &record);
            } else if spec.running && down {
                // Its policy gave up on it during this boot; it stays down until an
                // operation starts it.
                slot.status.send_modify(|s| s.runtime.state = "exited".into());
                control.spec = Some(spec);
            } else if spec.running {
                // Processes with its mark that nobody supervises (its record lost track
                // of them) would hold its port or its volume: they go first, gracefully.
                stop_everything(0, &record.id, &spec.launch.stop).await;
                // After a reboot it comes back as at a first start; within the same
                // boot it crashed while no agent watched: a restart by its policy.
                let starter = if this_boot { Starter::Policy } else { Starter::Boot };
                let (again, launch) = (spec.record.clone(), spec.launch.clone());
                let secrets = spec.secrets.clone().unwrap_or_else(|| slot.app.secrets_snapshot());
                control.spec = Some(spec);
                if let Err(e) = self.start_locked(&slot, &mut control, again, launch, secrets, starter) {
                    slot.status.send_modify(|s| {
                        s.runtime.state = "crashed".into();
                        s.runtime.last_exit = Some(format!("could not start it again: {e}"));
                    });
                }
            }
        }
    }

    fn adopt(&self, slot: &Arc<Slot>, control: &mut Control, spec: Spec, record: &InstanceRecord) {
        self.note_beam(&slot.app, record);
        control.incarnation += 1;
        let incarnation = control.incarnation;
        let launch = spec.launch.clone();
        control.spec = Some(spec);
        control.supervised = true;
        // Healthy only once its checks say so again: it may have been adopted while it
        // was still starting, or failing.
        slot.status.send_modify(|s| {
            s.phase = Phase::Starting;
            s.record = Some(record.clone());
            s.pid = record.pid;
            s.since = Some(Instant::now());
            s.healthy_at = None;
            s.runtime.state = "starting".into();
            s.runtime.up_since = Some(record.started_at);
        });
        let exit = Exit::Adopted { pid: record.pid, starttime: record.starttime };
        control.monitor =
            Some(tokio::spawn(self.clone().monitor(Arc::clone(slot), incarnation, exit, launch, record.clone())));
    }

    /// Starts the instance of `record`, stopping what runs there first (`replace`).
    pub async fn start(
        &self,
        app: &App,
        mut record: InstanceRecord,
        launch: Launch,
        replace: bool,
    ) -> Result<u32, String> {
        let slot = self.slot(app, &record.id);
        let mut control = slot.busy.lock().await;
        // What would stop the new process from starting is found before the old one
        // is stopped: the old one keeps serving then.
        startable(app, &record)?;
        if replace {
            let stop = control.spec.as_ref().map_or_else(|| launch.stop.clone(), |s| s.launch.stop.clone());
            self.stop_locked(&slot, &mut control, &stop).await;
        } else if matches!(slot.status.borrow().phase, Phase::Starting | Phase::Healthy { .. }) {
            return Err(format!("instance {} is already running", record.id));
        }
        control.backoff = FIRST_BACKOFF;
        slot.status.send_modify(|s| s.runtime.restarts = 0);
        if !replace {
            stop_everything(0, &record.id, &launch.stop).await;
        }
        let (launch, secrets) = match as_ran(app, &launch, &record.group) {
            Some((launch, secrets, config)) => {
                record.config = config;
                (launch, secrets)
            }
            None => (launch, app.secrets_snapshot()),
        };
        self.start_locked(&slot, &mut control, record, launch, secrets, Starter::Operation)
    }

    fn start_locked(
        &self,
        slot: &Arc<Slot>,
        control: &mut Control,
        mut record: InstanceRecord,
        launch: Launch,
        secrets: Snapshot,
        starter: Starter,
    ) -> Result<u32, String> {
        let app = &slot.app;
        let release = app.release(&record.version);
        startable(app, &record)?;
        let dir = app.instance(&record.id);
        let root = dir.join("root");
        let tmp = dir.join("tmp");
        (|| -> std::io::Result<()> {
            fs::create_dir_all(&root)?;
            fs::create_dir_all(&tmp)?;
            link_release(&root, &release)
        })()
        .map_err(|e| format!("preparing {}: {e}", dir.display()))?;
        let mut env = instance_env(&launch, &secrets.values(), &tmp, &record);
        beam_env(&release, &dir, &record, &mut env);
        self.note_beam(app, &record);
        let log = open_log(&dir).map_err(|e| format!("opening the log of {}: {e}", record.id))?;
        let mut note = log.try_clone().map_err(|e| e.to_string())?;
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let _ = writeln!(note, "== {stamp} starting {}", record.version);
        let mut command = Command::new(&self.inner.exe);
        command
            .args(["agent", "launch"])
            .env_clear()
            .envs(&env)
            .env("FERRY_LAUNCH_CWD", &root)
            .env("FERRY_LAUNCH_NOFILE", super::nofile_at_start())
            .env("FERRY_LAUNCH_ARGV", serde_json::to_string(&argv(&launch.start)).unwrap_or_default())
            .current_dir(&root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let (child, ended) =
            self.inner.reaper.spawn(&mut command).map_err(|e| format!("starting {}: {e}", record.id))?;
        let pid = child.id();
        record.pid = pid;
        record.starttime = procs::starttime(pid).unwrap_or(0);
        record.boot = procs::boot_id();
        record.started_at = now_ms();
        // As the host reports it: the secrets file's digest, empty without one.
        record.config.secrets = secrets.digest();
        let (restarts, last_exit) = {
            let status = slot.status.borrow();
            (status.runtime.restarts + u32::from(starter == Starter::Policy), status.runtime.last_exit.clone())
        };
        let spec = Spec {
            record: record.clone(),
            launch: launch.clone(),
            running: true,
            restarts,
            down_in_boot: None,
            last_exit,
            secrets: Some(secrets),
        };
        let recorded = write_spec(app, &spec).and_then(|()| app.write_record(&record));
        if let Err(e) = recorded {
            // Unrecorded, nobody could supervise it: it goes at once (it may not lead
            // its own group yet, so the process itself too).
            procs::kill_group(pid, rustix::process::Signal::KILL);
            procs::kill(pid, rustix::process::Signal::KILL);
            return Err(format!("recording {} (a full disk?): {e}", record.id));
        }
        control.incarnation += 1;
        control.supervised = starter != Starter::Operation;
        control.spec = Some(spec);
        let incarnation = control.incarnation;
        slot.status.send_modify(|s| {
            s.phase = Phase::Starting;
            s.record = Some(record.clone());
            s.pid = pid;
            s.since = Some(Instant::now());
            s.healthy_at = None;
            s.runtime.state = "starting".into();
            s.runtime.up_since = Some(record.started_at);
            s.runtime.health = None;
            s.runtime.restarts = restarts;
        });
        if let Some(old) = control.monitor.take() {
            old.abort();
        }
        let exit = Exit::Child(ended);
        control.monitor =
            Some(tokio::spawn(self.clone().monitor(Arc::clone(slot), incarnation, exit, launch, record.clone())));
        Ok(pid)
    }

    /// Watches one incarnation: its checks, its log's size, its exit.
    async fn monitor(self, slot: Arc<Slot>, incarnation: u64, exit: Exit, launch: Launch, record: InstanceRecord) {
        let addr = SocketAddr::from(([127, 0, 0, 1], record.port));
        let ports = record.ports;
        let checks = launch.checks.clone();
        let started = Instant::now();
        // While it starts, checks come fast and back off; once healthy, at the checks'
        // interval. The log's size is looked at every second either way.
        let mut pause = crate::health::FIRST_POLL;
        let mut next_check = Instant::now() + pause;
        let mut exited = Box::pin(exit.wait());
        loop {
            let wake = next_check.min(Instant::now() + LOG_EVERY);
            tokio::select! {
                ended = &mut exited => {
                    self.exited(&slot, incarnation, ended).await;
                    return;
                }
                () = tokio::time::sleep_until(wake) => {}
            }
            rotate_log(&slot.app.instance(&slot.id));
            if Instant::now() < next_check {
                continue;
            }
            let result = checks.check_ports(addr, &ports).await;
            let passing = result.is_ok();
            let miss = result.as_ref().err().cloned();
            slot.status.send_modify(|s| {
                s.runtime.health = Some(Health { passing, detail: result.err().map(|m| m.message), at: now_ms() });
                if passing && s.healthy_at.is_none() {
                    s.healthy_at = Some(Instant::now());
                    s.phase = Phase::Healthy { after: started.elapsed() };
                    s.runtime.state = "running".into();
                }
            });
            let healthy = slot.status.borrow().healthy_at.is_some();
            if healthy && started.elapsed() > SETTLED {
                slot.status.send_modify(|s| s.runtime.restarts = 0);
            }
            pause = match miss {
                Some(miss) if !healthy => crate::health::next_pause(pause, &miss),
                _ => checks.interval(),
            };
            next_check = Instant::now() + pause;
        }
    }

    /// The process of `incarnation` ended: stop what it left behind, then restart it
    /// by its policy.
    async fn exited(&self, slot: &Arc<Slot>, incarnation: u64, ended: Ended) {
        let mut how = ended.describe();
        let left = procs::marked(&slot.id);
        if !left.is_empty() {
            for pid in &left {
                procs::kill(*pid, rustix::process::Signal::KILL);
            }
            how = format!(
                "{how}, leaving {} process(es) behind, which were stopped: the start command must stay in the foreground",
                left.len()
            );
        }
        let mut control = slot.busy.lock().await;
        if control.incarnation != incarnation {
            return;
        }
        if self.frozen() {
            // The agent is leaving (a shutdown, a handover): the next one decides.
            slot.status.send_modify(|s| {
                s.phase = Phase::Exited { how: how.clone() };
                s.pid = 0;
            });
            return;
        }
        let (was_healthy, ran) = {
            let status = slot.status.borrow();
            (status.healthy_at.is_some(), status.since.map(|at| at.elapsed()))
        };
        if ran.is_some_and(|ran| ran >= SETTLED) {
            // Up for a while: this crash starts a new series.
            control.backoff = FIRST_BACKOFF;
            slot.status.send_modify(|s| s.runtime.restarts = 0);
        }
        slot.status.send_modify(|s| {
            s.phase = Phase::Exited { how: how.clone() };
            s.pid = 0;
            s.runtime.last_exit = Some(how.clone());
            s.runtime.state = "exited".into();
        });
        let Some(spec) = control.spec.clone() else { return };
        let restart = spec.launch.restart;
        let wanted = spec.running
            && (was_healthy || control.supervised)
            && match restart.policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => !ended.success(),
                RestartPolicy::Never => false,
            };
        let restarts = slot.status.borrow().runtime.restarts;
        if !wanted || restarts >= restart.retries {
            if wanted {
                slot.status.send_modify(|s| s.runtime.state = "crashed".into());
            }
            // Down until an operation starts it, for the rest of this boot: the next
            // agent leaves it so.
            if let Some(spec) = control.spec.as_mut().filter(|s| s.running) {
                spec.down_in_boot = Some(procs::boot_id());
                spec.last_exit = Some(how.clone());
                spec.record.pid = 0;
                let _ = write_spec(&slot.app, spec);
            }
            return;
        }
        let backoff = control.backoff.max(FIRST_BACKOFF);
        control.backoff = (backoff * 2).min(MAX_BACKOFF);
        slot.status.send_modify(|s| s.runtime.state = "restarting".into());
        let (this, slot) = (self.clone(), Arc::clone(slot));
        drop(control);
        tokio::spawn(async move {
            tokio::time::sleep(backoff).await;
            let mut control = slot.busy.lock().await;
            if control.incarnation != incarnation || !control.spec.as_ref().is_some_and(|s| s.running) {
                return;
            }
            let Some(spec) = control.spec.clone() else { return };
            if this.frozen() {
                return;
            }
            let secrets = spec.secrets.unwrap_or_else(|| slot.app.secrets_snapshot());
            if let Err(e) = this.start_locked(&slot, &mut control, spec.record, spec.launch, secrets, Starter::Policy) {
                slot.status.send_modify(|s| {
                    s.runtime.state = "crashed".into();
                    s.runtime.last_exit = Some(format!("could not restart: {e}"));
                });
            }
        });
    }

    /// Stops the instance: its kill signal to its process group, then SIGKILL after its
    /// kill timeout (wall-clock time), then whatever else carries its mark.
    pub async fn stop(&self, app: &App, id: &str, stop: &Stop) -> bool {
        let slot = self.slot(app, id);
        let mut control = slot.busy.lock().await;
        let killed = self.stop_locked(&slot, &mut control, stop).await;
        if let Some(spec) = control.spec.as_mut() {
            spec.running = false;
            let _ = write_spec(app, spec);
        }
        killed
    }

    async fn stop_locked(&self, slot: &Arc<Slot>, control: &mut Control, stop: &Stop) -> bool {
        control.incarnation += 1;
        if let Some(monitor) = control.monitor.take() {
            monitor.abort();
        }
        let pid = slot.status.borrow().pid;
        let killed = stop_everything(pid, &slot.id, stop).await;
        slot.status.send_modify(|s| {
            s.phase = Phase::Stopped;
            s.pid = 0;
            s.runtime.state = "stopped".into();
        });
        if let Some(spec) = control.spec.as_mut() {
            spec.record.pid = 0;
            let _ = slot.app.write_record(&spec.record);
        }
        killed
    }

    /// Stops the instance and forgets it: its directory goes, its volumes are freed.
    pub async fn remove(&self, app: &App, id: &str) -> Result<(), String> {
        let slot = self.slot(app, id);
        {
            let mut control = slot.busy.lock().await;
            let stop = control
                .spec
                .as_ref()
                .map_or(Stop { signal: "SIGTERM".into(), timeout: Duration::from_secs(5) }, |s| s.launch.stop.clone());
            self.stop_locked(&slot, &mut control, &stop).await;
        }
        self.slots().remove(&(app.dir.clone(), id.to_string()));
        super::files::remove_tree(&app.instance(id)).map_err(|e| e.to_string())?;
        app.volumes_release(id).map_err(|e| e.to_string())
    }

    /// Stops the `epmd` that BEAM instances started (`-daemon`: it escapes their process
    /// groups) once no BEAM instance of this agent runs: only an epmd of this account
    /// whose executable is in the directory of an app this agent knows, or of `gone`
    /// (an app just destroyed).
    fn note_beam(&self, app: &App, record: &InstanceRecord) {
        if app.release(&record.version).join("releases").join("start_erl.data").is_file() {
            self.inner.beam.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn reap_epmd(&self, gone: Option<&Path>) {
        use std::os::unix::fs::MetadataExt as _;
        if !self.inner.beam.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let slots: Vec<Arc<Slot>> =
            self.inner.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values().cloned().collect();
        let beam_runs = slots.iter().any(|slot| {
            let status = slot.status.borrow();
            matches!(status.phase, Phase::Starting | Phase::Healthy { .. })
                && status
                    .record
                    .as_ref()
                    .is_some_and(|r| slot.app.release(&r.version).join("releases").join("start_erl.data").is_file())
        });
        if beam_runs {
            return;
        }
        self.inner.beam.store(false, std::sync::atomic::Ordering::Relaxed);
        let mut dirs: Vec<PathBuf> = slots.iter().map(|s| s.app.dir.clone()).collect();
        dirs.extend(gone.map(Path::to_path_buf));
        let Ok(me) = fs::metadata("/proc/self").map(|m| m.uid()) else { return };
        let Ok(entries) = fs::read_dir("/proc") else { return };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else { continue };
            let ours = entry.metadata().is_ok_and(|m| m.uid() == me);
            let epmd = fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.trim() == "epmd");
            let exe = fs::read_link(entry.path().join("exe")).unwrap_or_default();
            if ours && epmd && dirs.iter().any(|d| exe.starts_with(d)) {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                }
            }
        }
    }

    /// Stops every instance of `app` and forgets them (before the app is destroyed).
    pub async fn forget_app(&self, app: &App) {
        let (records, _) = app.records();
        for record in records {
            let stop = read_spec(app, &record.id)
                .map_or(Stop { signal: "SIGTERM".into(), timeout: Duration::from_secs(5) }, |s| s.launch.stop);
            self.stop(app, &record.id, &stop).await;
        }
        self.slots().retain(|(dir, _), _| dir != &app.dir);
    }

    /// Waits until process `pid` of the instance passes its checks, exits, or the
    /// deadline passes.
    pub async fn wait_healthy(&self, app: &App, id: &str, pid: u32, deadline: Duration) -> Result<Duration, Failure> {
        let Some(slot) = self.existing(app, id) else {
            return Err(Failure::Lost { message: format!("the agent knows no instance {id}") });
        };
        let mut status = slot.status.subscribe();
        let wait = async {
            loop {
                let now = status.borrow_and_update().clone();
                if now.pid != pid && now.pid != 0 {
                    return Err(Failure::Exited { how: Some(replaced(&now)) });
                }
                match now.phase {
                    Phase::Healthy { after } => return Ok(after),
                    Phase::Exited { how } => return Err(Failure::Exited { how: Some(how) }),
                    Phase::Stopped => return Err(Failure::Exited { how: Some("it was stopped".into()) }),
                    Phase::Starting => {}
                }
                if status.changed().await.is_err() {
                    return Err(Failure::Lost { message: "the instance was forgotten".into() });
                }
            }
        };
        if let Ok(result) = tokio::time::timeout(deadline, wait).await {
            return result;
        }
        let last = slot.status.borrow().runtime.health.clone();
        let last_error = last.and_then(|h| h.detail).unwrap_or_else(|| "no check has passed".into());
        Err(Failure::TimedOut { after: deadline, last_error })
    }

    /// Waits until the instance has stayed up `min_healthy` since it became healthy.
    pub async fn wait_stable(&self, app: &App, id: &str, pid: u32, min_healthy: Duration) -> Result<(), Failure> {
        let Some(slot) = self.existing(app, id) else {
            return Err(Failure::Lost { message: format!("the agent knows no instance {id}") });
        };
        let mut status = slot.status.subscribe();
        loop {
            let now = status.borrow_and_update().clone();
            match (&now.phase, now.healthy_at) {
                (Phase::Healthy { .. }, Some(at)) if now.pid == pid => {
                    let until = at + min_healthy;
                    if Instant::now() >= until {
                        return Ok(());
                    }
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {}
                        changed = status.changed() => if changed.is_err() { return Ok(()) },
                    }
                }
                (Phase::Exited { how }, _) => {
                    let after = now.healthy_at.map_or(Duration::ZERO, |at| at.elapsed());
                    return Err(Failure::DiedAfterHealthy { after, how: Some(how.clone()) });
                }
                _ if now.pid != pid => return Err(Failure::Exited { how: Some(replaced(&now)) }),
                _ => {
                    if status.changed().await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The complete lines the instance's log gained since byte `from` (none, from its
    /// end, when `None`), at most [`LOG_READ_LIMIT`] bytes of them, and where to read on.
    /// A log emptied by rotation since is read on in `log.1` first.
    pub fn log_read(app: &App, id: &str, from: Option<u64>) -> (Vec<String>, u64) {
        let dir = app.instance(id);
        let len = fs::metadata(dir.join("log")).map_or(0, |m| m.len());
        let Some(from) = from else { return (Vec::new(), len) };
        if from > len {
            // Rotated since (the log was copied to log.1 and emptied): the rest of the
            // old log first, read on there while it lasts, then the new one from 0.
            let old = dir.join("log.1");
            let (lines, end) = read_lines_from(&old, from);
            let old_len = fs::metadata(&old).map_or(0, |m| m.len());
            if end < old_len && end > len {
                return (lines, end);
            }
            let (more, end) = read_lines_from(&dir.join("log"), 0);
            return (lines.into_iter().chain(more).collect(), end);
        }
        read_lines_from(&dir.join("log"), from)
    }

    /// The last `lines` of the instance's log (with `skip_checks`, without the lines its
    /// own health checks caused).
    pub fn log_tail(app: &App, id: &str, lines: usize, skip_checks: bool) -> Vec<String> {
        let mut redactor = crate::redact::Redactor::default();
        let noise: Vec<String> = if skip_checks {
            let mut noise = vec![crate::health::USER_AGENT.to_string()];
            if let Some(spec) = read_spec(app, id) {
                noise.extend(spec.launch.checks.request_lines());
                // Quoted in a failure report, and so in the history: secret values go.
                let secrets = spec.secrets.as_ref().map_or_else(|| app.secrets(), Snapshot::values);
                redactor = crate::redact::Redactor::new(&secrets, &spec.launch.env.0);
            }
            noise
        } else {
            Vec::new()
        };
        let dir = app.instance(id);
        let mut all = Vec::new();
        for file in [dir.join("log.1"), dir.join("log")] {
            if let Ok(f) = fs::File::open(file) {
                all.extend(std::io::BufReader::new(f).lines().map_while(Result::ok));
            }
        }
        all.retain(|line| !noise.iter().any(|n| line.contains(n.as_str())));
        let skip = all.len().saturating_sub(lines);
        all.split_off(skip).into_iter().map(|line| redactor.redact(&line).into_owned()).collect()
    }
}

/// How an incarnation's end is heard.
enum Exit {
    Child(tokio::sync::oneshot::Receiver<Ended>),
    Adopted { pid: u32, starttime: u64 },
}

impl Exit {
    async fn wait(self) -> Ended {
        match self {
            Exit::Child(ended) => ended.await.unwrap_or(Ended::Unknown),
            Exit::Adopted { pid, starttime } => {
                while procs::same_process(pid, starttime) {
                    tokio::time::sleep(ADOPTED_POLL).await;
                }
                Ended::Unknown
            }
        }
    }
}

/// Why the process a caller waits for is not the instance's any more.
fn replaced(now: &Status) -> String {
    match &now.runtime.last_exit {
        Some(how) if now.runtime.restarts > 0 => format!("{how}; its restart policy started it again"),
        _ => "another process replaced it".into(),
    }
}

/// Whether the instance of `record` can be started: its release is installed, and
/// its directories and log can be made.
fn startable(app: &App, record: &InstanceRecord) -> Result<(), String> {
    if app.installed(&record.version).is_none() {
        return Err(format!("release {} is not installed", record.version));
    }
    let dir = app.instance(&record.id);
    (|| -> std::io::Result<()> {
        fs::create_dir_all(dir.join("root"))?;
        fs::create_dir_all(dir.join("tmp"))?;
        open_log(&dir).map(drop)
    })()
    .map_err(|e| format!("preparing {}: {e}", dir.display()))
}

/// Stops an instance: its process group (`pgid`; 0 when the agent knows no process of
/// it) and every process carrying its mark (what it left outside its group, daemons
/// included), all at once with `stop`'s signal, then SIGKILL for what is left after its
/// timeout (wall-clock time). True when anything had to be killed.
async fn stop_everything(pgid: u32, id: &str, stop: &Stop) -> bool {
    // Wall-clock time from the signal, whatever looking for processes costs.
    let deadline = Instant::now() + stop.timeout;
    let signal = procs::signal(&stop.signal);
    if pgid != 0 {
        procs::kill_group(pgid, signal);
    }
    let marked = procs::marked(id);
    for pid in &marked {
        procs::kill(*pid, signal);
    }
    let gone = || (pgid == 0 || !procs::group_alive(pgid)) && !marked.iter().any(|p| procs::alive(*p));
    let mut pause = Duration::from_millis(1);
    while !gone() {
        if Instant::now() >= deadline {
            if pgid != 0 {
                procs::kill_group(pgid, rustix::process::Signal::KILL);
            }
            for pid in procs::marked(id) {
                procs::kill(pid, rustix::process::Signal::KILL);
            }
            let until = Instant::now() + Duration::from_secs(5);
            while !gone() && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            return true;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
    // Started while it stopped (a daemon forked at the last moment): no second wait.
    let late = procs::marked(id);
    for pid in &late {
        procs::kill(*pid, rustix::process::Signal::KILL);
    }
    !late.is_empty()
}

/// The program and arguments of a start command: the words themselves when they are a
/// plain program call (the app is then the process ferry signals, no shell between),
/// else `sh -c` of it.
pub fn argv(start: &str) -> Vec<String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || " -_./=:@,+%".contains(c);
    let words: Vec<String> = start.split_whitespace().map(str::to_string).collect();
    let first = words.first().map(String::as_str).unwrap_or_default();
    if start.chars().all(plain) && !first.is_empty() && !first.contains('=') && !SHELL_WORDS.contains(&first) {
        words
    } else {
        vec!["sh".into(), "-c".into(), start.to_string()]
    }
}

/// Shell builtins and reserved words: a start command beginning with one is not a
/// program that could run by itself.
const SHELL_WORDS: &[&str] = &[
    "!", ".", ":", "[", "{", "}", "alias", "bg", "break", "case", "cd", "command", "continue", "do", "done", "elif",
    "else", "esac", "eval", "exec", "exit", "export", "false", "fc", "fg", "fi", "for", "getopts", "hash", "if", "in",
    "jobs", "kill", "local", "newgrp", "pwd", "read", "readonly", "return", "set", "shift", "source", "test", "then",
    "time", "times", "trap", "true", "type", "ulimit", "umask", "unalias", "unset", "until", "wait", "while",
];

/// Variables ferry sets itself; neither `[env]` nor a secret overrides them.
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

/// An instance's environment: a clean base, `[env]`, the app's secrets over them, and
/// ferry's own variables over everything.
pub fn instance_env(
    launch: &Launch,
    secrets: &BTreeMap<String, String>,
    tmp: &Path,
    record: &InstanceRecord,
) -> BTreeMap<String, String> {
    let mut env = base_env();
    let (own, user): (Vec<_>, Vec<_>) = launch.env.0.iter().partition(|(k, _)| OWN_VARS.contains(&k.as_str()));
    env.extend(user.into_iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(secrets.iter().filter(|(k, _)| !OWN_VARS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())));
    env.extend(own.into_iter().map(|(k, v)| (k.clone(), v.clone())));
    env.insert("TMPDIR".into(), tmp.display().to_string());
    env.insert("FERRY_INSTANCE_ID".into(), record.id.clone());
    env
}

/// What an instance of a BEAM release (`mix release`, rebar3) needs to run beside
/// others of its app, unless `[env]` or a secret already says: a node name of its own
/// (`<app>-<id>@<address>`, stable for the instance's life), long names, and a writable
/// `RELEASE_TMP` and crash dump in its own directory instead of the shared release.
/// The cookie is the app's `RELEASE_COOKIE` secret (the deploy makes one).
pub fn beam_env(release: &Path, dir: &Path, record: &InstanceRecord, env: &mut BTreeMap<String, String>) {
    if !release.join("releases").join("start_erl.data").is_file() {
        return;
    }
    let address = env.get("FERRY_PRIVATE_ADDR").cloned().unwrap_or_else(|| "127.0.0.1".into());
    let app = env.get("FLY_APP_NAME").cloned().unwrap_or_else(|| "app".into());
    env.entry("RELEASE_DISTRIBUTION".into()).or_insert_with(|| "name".into());
    env.entry("RELEASE_NODE".into()).or_insert_with(|| beam_node(&app, &record.id, &address));
    env.entry("RELEASE_TMP".into()).or_insert_with(|| dir.join("tmp").display().to_string());
    env.entry("ERL_CRASH_DUMP".into()).or_insert_with(|| dir.join("erl_crash.dump").display().to_string());
    // instances/<id> of the app's directory: the peers file is the app's.
    if let Some(app_dir) = dir.parent().and_then(Path::parent) {
        env.entry("FERRY_PEERS_FILE".into()).or_insert_with(|| app_dir.join("peers").display().to_string());
    }
    // The epmd the first node starts listens where nodes are reached, not everywhere
    // (and on 127.0.0.1, where each node registers).
    // epmd takes IP addresses only: a host written by name leaves it on every address.
    if address.parse::<std::net::IpAddr>().is_ok() {
        let epmd = if address == "127.0.0.1" { address } else { format!("127.0.0.1,{address}") };
        env.entry("ERL_EPMD_ADDRESS".into()).or_insert(epmd);
    }
}

/// The node name of instance `id` of `app` on a host reached at `address`.
pub fn beam_node(app: &str, id: &str, address: &str) -> String {
    let app: String =
        app.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') { c } else { '_' }).collect();
    format!("{app}-{id}@{address}")
}

/// What every process ferry starts gets from the account, and nothing else.
pub fn base_env() -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    env.insert("PATH".to_string(), path);
    env.insert("HOME".to_string(), super::paths::home().display().to_string());
    for key in ["USER", "LOGNAME", "LANG"] {
        if let Ok(value) = std::env::var(key) {
            env.insert(key.to_string(), value);
        }
    }
    env.entry("LANG".into()).or_insert_with(|| "C.UTF-8".into());
    env
}

/// Makes `root` show the release's top-level entries as links, so a start command's
/// relative paths (`bin/app`) work from the instance's own directory while whatever the
/// app writes there stays out of the release.
fn link_release(root: &Path, release: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        if entry.file_type()?.is_symlink() {
            fs::remove_file(entry.path())?;
        }
    }
    for entry in fs::read_dir(release)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == super::files::RELEASE_FILE {
            continue;
        }
        let link = root.join(&name);
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(entry.path(), &link)?;
        }
    }
    Ok(())
}

/// The most of a log one read returns; the rest comes with the next.
const LOG_READ_LIMIT: u64 = 1 << 20;

/// The complete lines of `path` from byte `from` (up to [`LOG_READ_LIMIT`]), and the
/// offset after the last one.
fn read_lines_from(path: &Path, from: u64) -> (Vec<String>, u64) {
    use std::io::{Read as _, Seek as _};
    let Ok(mut file) = fs::File::open(path) else { return (Vec::new(), from) };
    if file.seek(std::io::SeekFrom::Start(from)).is_err() {
        return (Vec::new(), from);
    }
    let mut bytes = Vec::new();
    let _ = file.take(LOG_READ_LIMIT).read_to_end(&mut bytes);
    let Some(last) = bytes.iter().rposition(|b| *b == b'\n') else {
        // A line longer than a whole read goes out in pieces rather than holding up the rest.
        if bytes.len() as u64 == LOG_READ_LIMIT {
            return (vec![String::from_utf8_lossy(&bytes).into_owned()], from + LOG_READ_LIMIT);
        }
        return (Vec::new(), from);
    };
    let lines = String::from_utf8_lossy(&bytes[..last]).lines().map(str::to_string).collect();
    (lines, from + last as u64 + 1)
}

fn open_log(dir: &Path) -> std::io::Result<fs::File> {
    super::files::open_private_log(&dir.join("log"))
}

/// Keeps a chatty instance from filling the disk: past [`LOG_LIMIT`] the log is copied
/// to `log.1` and emptied (the instance appends, so it writes on at the new end).
fn rotate_log(dir: &Path) {
    let log = dir.join("log");
    if fs::metadata(&log).is_ok_and(|m| m.len() > log_limit()) && fs::copy(&log, dir.join("log.1")).is_ok() {
        if let Ok(mut file) = fs::OpenOptions::new().write(true).open(&log) {
            let _ = file.set_len(0);
            let _ = file.rewind();
        }
    }
}

fn spec_path(app: &App, id: &str) -> PathBuf {
    app.instance(id).join("spec.json")
}

pub fn read_spec(app: &App, id: &str) -> Option<Spec> {
    serde_json::from_str(&fs::read_to_string(spec_path(app, id)).ok()?).ok()
}

fn write_spec(app: &App, spec: &Spec) -> std::io::Result<()> {
    let json = serde_json::to_vec(spec).map_err(std::io::Error::other)?;
    super::files::write_atomic(&spec_path(app, &spec.record.id), &json, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_start_commands_run_as_themselves_and_the_rest_through_sh() {
        assert_eq!(argv("bin/hello start --port=80"), ["bin/hello", "start", "--port=80"]);
        assert_eq!(argv("PORT=1 bin/start"), ["sh", "-c", "PORT=1 bin/start"]);
        assert_eq!(argv("cd app && bin/start"), ["sh", "-c", "cd app && bin/start"]);
        assert_eq!(argv("bin/start $(id)"), ["sh", "-c", "bin/start $(id)"]);
        assert_eq!(argv("exec bin/server"), ["sh", "-c", "exec bin/server"]);
        assert_eq!(argv("ulimit -n 4096"), ["sh", "-c", "ulimit -n 4096"]);
        assert_eq!(argv(""), ["sh", "-c", ""]);
    }

    #[test]
    fn ferry_variables_win_over_secrets_which_win_over_env() {
        let launch = Launch {
            start: "x".into(),
            env: crate::host::Env(BTreeMap::from([
                ("A".to_string(), "env".to_string()),
                ("PORT".to_string(), "4000".to_string()),
            ])),
            checks: serde_json::from_str(r#"{"probes":[]}"#).unwrap(),
            stop: Stop { signal: "SIGTERM".into(), timeout: Duration::from_secs(1) },
            restart: crate::host::proto::Restart::default(),
            as_ran: None,
        };
        let secrets = BTreeMap::from([("A".to_string(), "secret".to_string()), ("PORT".to_string(), "1".to_string())]);
        let record: InstanceRecord = serde_json::from_str(
            r#"{"id":"i","region":"r","host":"h","version":"v","port":4000,"created_at":0,"started_at":0}"#,
        )
        .unwrap();
        let env = instance_env(&launch, &secrets, Path::new("/t"), &record);
        assert_eq!(env["A"], "secret");
        assert_eq!(env["PORT"], "4000");
        assert_eq!(env["TMPDIR"], "/t");
        assert!(env.contains_key("PATH") && env.contains_key("HOME"));
    }

    #[test]
    fn a_followed_log_is_read_on_line_by_line_across_a_rotation() {
        let tmp = tempfile::tempdir().unwrap();
        let app = App::new(tmp.path().to_path_buf());
        let dir = app.instance("i1");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("log"), "old one\n").unwrap();
        let (none, end) = Supervisor::log_read(&app, "i1", None);
        assert!(none.is_empty());
        fs::write(dir.join("log"), "old one\nold two\npartial").unwrap();
        let (lines, end) = Supervisor::log_read(&app, "i1", Some(end));
        assert_eq!(lines, ["old two"], "only complete lines");
        // Rotated: log.1 holds the old log (grown meanwhile), the log starts again.
        fs::write(dir.join("log.1"), "old one\nold two\npartial line\n").unwrap();
        fs::write(dir.join("log"), "new one\n").unwrap();
        let (lines, end) = Supervisor::log_read(&app, "i1", Some(end));
        assert_eq!(lines, ["partial line", "new one"]);
        assert_eq!(end, 8);
        // A line longer than one read goes out in pieces.
        let long = "x".repeat(usize::try_from(LOG_READ_LIMIT).unwrap() + 10);
        fs::write(dir.join("log"), format!("new one\n{long}\n")).unwrap();
        let (first, end) = Supervisor::log_read(&app, "i1", Some(end));
        assert_eq!(first.len(), 1);
        let (rest, _) = Supervisor::log_read(&app, "i1", Some(end));
        assert_eq!(first[0].len() + rest[0].len(), long.len());
    }
}
