//! The one engine: every operation that changes instances — deploy, rollback,
//! restart, scale and regions — runs through [`Engine::run`], one sequence written
//! once:
//!
//! lock (reading every host's state under it) → plan (every phase, as data) →
//! record that it started → ship → migrate → stop → roll out → finish (record,
//! mark current, prune, unlock)
//!
//! [`Engine::preview`] makes the same plan without the lock, for `--dry-run`. The
//! engine reports through events and returns the user's error; it never prints.

pub mod doors;
mod execute;
pub mod finish;
pub mod instance;
pub mod lock;
pub mod migrate;
pub mod observe;
pub mod outcome;
pub mod plan;
pub mod ports;
mod prepare;
pub mod rollout;
pub mod ship;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::fleet::Fleet;
use crate::history::{Record, Status};
use crate::host::lock::Guard;
use crate::host::Host;
use crate::postgres::{Backup, Database};
use crate::release::Artifact;
use crate::report::{Event, Outcome, Reporter};
use crate::settings::Settings;

use finish::{record_history, Done};
use plan::{Kind, Plan};
use prepare::Prepared;
use rollout::Gates;
use ship::Shipment;

/// What an operation does.
pub enum Operation {
    /// Ship a release and roll it out.
    Deploy(Release),
    /// Roll back to `target`, a release still on every host, from `current`.
    Rollback { target: String, current: Option<String>, restore: Option<Box<Restore>> },
    /// Replace every instance on its current version (after a secrets change).
    Restart { command: String },
    /// Stop `stop`, then bring `regions` up to their counts on the current release:
    /// scaling and adding or removing regions. `done` is the last line on success.
    Converge { kind: Kind, regions: Vec<String>, stop: Stops, done: Option<String> },
}

/// Which instances a converge stops, decided under the lock.
#[derive(Debug, Clone)]
pub enum Stops {
    /// These instances.
    Ids(Vec<String>),
    /// Every instance of this region.
    Region(String),
}

/// The release a deploy ships: built (or taken from a file), or only its version
/// (enough for a plan).
pub struct Release {
    pub version: String,
    pub artifact: Option<Artifact>,
    /// The start command, checked against the release.
    pub start: String,
}

impl Release {
    /// A BEAM release (`mix release`, rebar3): it has `releases/start_erl.data`.
    pub fn is_beam(&self) -> bool {
        self.artifact.as_ref().is_some_and(|a| a.has_file("releases/start_erl.data"))
    }
}

/// A backup to restore before a rollback, confirmed by the user.
pub struct Restore {
    pub host: Host,
    pub db: Database,
    pub backup: Backup,
}

impl Operation {
    /// The command named in the lock.
    fn command(&self) -> String {
        match self {
            Operation::Deploy(_) => "deploy".into(),
            Operation::Rollback { .. } => "rollback".into(),
            Operation::Restart { command } => command.clone(),
            Operation::Converge { kind, .. } => kind.as_str().into(),
        }
    }
}

/// Where an operation runs and reports.
pub struct Engine<'a> {
    pub settings: &'a Settings,
    pub fleet: &'a Fleet,
    pub reporter: Arc<dyn Reporter>,
}

impl Engine<'_> {
    pub fn new<'a>(settings: &'a Settings, fleet: &'a Fleet, reporter: Arc<dyn Reporter>) -> Engine<'a> {
        Engine { settings, fleet, reporter }
    }

    fn event(&self, event: &Event) {
        self.reporter.event(event);
    }

    /// Runs `op` under the lock, from the plan to the finish.
    pub async fn run(&self, op: Operation) -> Result<(), Error> {
        let guard = lock::take(self.fleet, self.reporter.as_ref(), &op.command(), self.settings.lock_wait).await?;
        self.run_with(op, guard).await
    }

    /// Runs `op` under `guard`, a lock already taken for it (and released here).
    pub async fn run_with(&self, op: Operation, mut guard: Guard) -> Result<(), Error> {
        let started = Instant::now();
        // Boxed: every phase's state lives in this one future.
        let result = Box::pin(self.run_locked(op, &mut guard, started)).await;
        guard.release().await;
        result
    }

    /// The plan `op` would carry out now, without taking the lock; nothing changes.
    /// `None` when there would be nothing to do.
    pub async fn preview(&self, op: &Operation) -> Result<Option<Plan>, Error> {
        let observed = observe::observe(self.fleet).await?;
        Ok(match self.prepare(op, &observed, false).await? {
            Prepared::Plan { plan, .. } => Some(*plan),
            Prepared::Nothing { .. } => None,
        })
    }

    /// Prints a plan as `plan` events, one per step.
    pub fn report_plan(&self, plan: &Plan) {
        if plan.kind == Kind::Deploy {
            self.warnings();
        }
        for item in plan.items() {
            self.event(&Event::Plan(item));
        }
    }

    /// What resolving the settings found odd, which a deploy reports.
    fn warnings(&self) {
        for warning in &self.settings.warnings {
            self.event(&Event::Warning { message: warning.clone() });
        }
    }

    async fn run_locked(&self, op: Operation, guard: &mut Guard, started: Instant) -> Result<(), Error> {
        let observed = guard.observed().clone();
        let artifact = match &op {
            Operation::Deploy(release) => {
                self.warnings();
                release.artifact.as_ref()
            }
            _ => None,
        };
        // What the hosts will be sent is readied meanwhile (a release of compressed
        // files is decompressed once, to ship as plain tar).
        let shipment = async {
            match artifact {
                Some(artifact) => Some(Shipment::prepare(self.settings, artifact, &observed, self.fleet.hosts()).await),
                None => None,
            }
        };
        let (prepared, shipment) = tokio::join!(self.prepare(&op, &observed, true), shipment);
        let (plan, start, strategy) = match prepared? {
            Prepared::Plan { plan, start, strategy } => (*plan, start, strategy),
            Prepared::Nothing { message, version } => {
                self.event(&Event::Finished {
                    outcome: Outcome::Succeeded,
                    previous: version.clone(),
                    version,
                    message,
                    duration_ms: millis(started.elapsed()),
                });
                return Ok(());
            }
        };
        // The backup is restored before anything else, so a restore that fails leaves
        // nothing behind, not even a history line.
        // Before anything changes: a port a host will not give stops the operation here.
        doors::open(&self.settings.proxy, self.fleet).await?;
        if let Operation::Rollback { restore: Some(restore), .. } = &op {
            migrate::restore(&restore.host, &restore.db, &restore.backup).await?;
        }
        if matches!(plan.kind, Kind::Deploy | Kind::Rollback) {
            self.event(&Event::DeployStarted {
                kind: plan.kind.as_str().into(),
                app: self.settings.app.clone(),
                version: plan.version.clone(),
                previous: plan.previous.clone(),
                strategy: format!("{strategy:?}").to_lowercase(),
                regions: self.fleet.region_names(),
            });
        }
        let record = Record::new(plan.kind.as_str(), &plan.version, plan.previous.clone());
        let mut gates = Gates { lease: guard.lease(), ..Gates::default() };
        // The history says the operation started while the first wave travels.
        let (shipped, ()) = tokio::join!(
            self.ship_first(&plan, shipment.as_ref(), &observed),
            record_history(self.reporter.as_ref(), self.fleet, &record)
        );
        let before = async {
            shipped?;
            if matches!(&op, Operation::Deploy(release) if release.is_beam())
                && !self.settings.instance.env.contains_key("RELEASE_COOKIE")
            {
                ship::ensure_cookie(self.reporter.as_ref(), self.fleet).await?;
            }
            if plan.kind != Kind::Rollback {
                // Hosts that joined later get the app's secrets before anything runs there.
                ship::sync_secrets(self.reporter.as_ref(), self.fleet, &observed).await?;
            }
            self.migrate(&plan, &mut gates, started).await?;
            self.stop_instances(&plan).await
        };
        if let Err(error) = before.await {
            let failed = record.finished(Status::Failed, Some(error.to_string()));
            record_history(self.reporter.as_ref(), self.fleet, &failed).await;
            return Err(error);
        }
        let summary = Box::pin(self.roll_out(&plan, &observed, shipment.as_ref(), start, gates)).await;
        if summary.failure.is_none() {
            self.retire(&plan, &summary).await;
        }
        let done_message = match &op {
            Operation::Converge { done, .. } => done.clone(),
            _ => None,
        };
        let beam = (observed.values().any(|s| s.beam)
            || matches!(&op, Operation::Deploy(release) if release.is_beam()))
        .then(|| self.settings.app.clone());
        let done = Done { plan: &plan, record: &record, summary: &summary, started, message: done_message, beam };
        finish::finish(&self.reporter, self.fleet, guard, &done).await
    }
}

pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A new instance id: 14 hex digits, like Fly machine ids.
pub fn new_instance_id() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 7];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        bytes.copy_from_slice(&nanos.to_le_bytes()[..7]);
    }
    hex(&bytes)
}

/// `bytes` as lowercase hex digits.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut text, b| {
        use std::fmt::Write as _;
        let _ = write!(text, "{b:02x}");
        text
    })
}
