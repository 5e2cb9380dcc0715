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

pub mod finish;
pub mod instance;
pub mod lock;
pub mod migrate;
pub mod observe;
pub mod outcome;
pub mod plan;
pub mod ports;
pub mod rollout;
pub mod ship;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Strategy;
use crate::error::Error;
use crate::fleet::Fleet;
use crate::history::{self, Record, Status};
use crate::host::lock::Guard;
use crate::host::{Host, InstanceState};
use crate::postgres::{Backup, Database};
use crate::release::Artifact;
use crate::report::{Event, Outcome, PlanItem, Pruned, Reporter};
use crate::settings::{Order, Settings};

use finish::{record_history, Done};
use instance::Spec;
use observe::{current_from, current_on_hosts, current_version, healthy_on, read_history, Observed};
use plan::{Finish, Instances, Kind, Migration, Plan, RegionSpec, StopStep, Wave};
use ports::PortPicker;
use rollout::{Gates, Rollout, Setup};
use ship::Shipment;

/// What an operation does.
pub enum Operation {
    /// Ship a release and roll it out.
    Deploy(Release),
    /// Roll back to `target`, a release still on every host, from `current`.
    Rollback { target: String, current: Option<String>, restore: Option<Box<Restore>> },
    /// Replace every instance on its current version (after a secrets change).
    Restart { command: String },
    /// Bring `regions` up to their counts on the current release, after stopping
    /// `stop` (instance ids): scaling and adding or removing regions.
    Converge { kind: Kind, regions: Vec<String>, stop: Vec<String> },
}

/// The release a deploy ships: built (or taken from a file), or only its version
/// (enough for a plan).
pub struct Release {
    pub version: String,
    pub artifact: Option<Artifact>,
    /// The start command, checked against the release.
    pub start: String,
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

/// A plan and what carrying it out needs beyond it.
struct Prepared {
    plan: Plan,
    start: String,
    strategy: Strategy,
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
        let started = Instant::now();
        let mut guard = lock::take(self.fleet, self.reporter.as_ref(), &op.command(), self.settings.lock_wait).await?;
        let result = self.run_locked(op, &mut guard, started).await;
        guard.release().await;
        result
    }

    /// The plan `op` would carry out now, without taking the lock; nothing changes.
    pub async fn preview(&self, op: &Operation) -> Result<Option<Plan>, Error> {
        let observed = observe::observe(self.fleet).await?;
        Ok(self.prepare(op, &observed, Instant::now(), false).await?.map(|p| p.plan))
    }

    /// Prints a plan as `plan` events, one per step.
    pub fn report_plan(&self, plan: &Plan) {
        for item in plan_items(plan) {
            self.event(&Event::Plan(item));
        }
    }

    async fn run_locked(&self, op: Operation, guard: &mut Guard, started: Instant) -> Result<(), Error> {
        let observed = guard.observed().clone();
        let Some(prepared) = self.prepare(&op, &observed, started, true).await? else { return Ok(()) };
        let Prepared { plan, start, strategy } = prepared;
        if matches!(plan.kind, Kind::Deploy | Kind::Rollback | Kind::Restart) {
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
        let artifact = match &op {
            Operation::Deploy(release) => release.artifact.as_ref(),
            _ => None,
        };
        let shipment = match artifact {
            Some(artifact) => Some(Shipment::prepare(self.settings, artifact, &observed, self.fleet.hosts()).await),
            None => None,
        };
        // The history says the operation started while the first wave travels.
        let (shipped, ()) = tokio::join!(
            self.ship_first(&plan, shipment.as_ref(), &observed),
            record_history(self.reporter.as_ref(), self.fleet, &record)
        );
        let before = async {
            shipped?;
            ship::sync_secrets(self.reporter.as_ref(), self.fleet, &observed).await?;
            if let Operation::Rollback { restore: Some(restore), .. } = &op {
                migrate::restore(&restore.host, &restore.db, &restore.backup).await?;
            }
            self.migrate(&plan, &mut gates, started).await?;
            self.stop_instances(&plan).await
        };
        if let Err(error) = before.await {
            record_history(
                self.reporter.as_ref(),
                self.fleet,
                &record.finished(Status::Failed, Some(error.to_string())),
            )
            .await;
            return Err(error);
        }
        let summary = self.roll_out(&plan, &observed, shipment.as_ref(), start, gates).await;
        let done = Done { plan: &plan, record: &record, summary: &summary, started };
        finish::finish(&self.reporter, self.fleet, guard, &done).await
    }

    /// The plan for `op` against `observed`. `None` when there is nothing to do
    /// (reported as finished). With `locked`, what is found out along the way (a
    /// killed deploy's missing history line) is repaired.
    async fn prepare(
        &self,
        op: &Operation,
        observed: &Observed,
        started: Instant,
        locked: bool,
    ) -> Result<Option<Prepared>, Error> {
        for warning in &self.settings.warnings {
            self.event(&Event::Warning { message: warning.clone() });
        }
        match op {
            Operation::Deploy(release) => self.prepare_deploy(release, observed, started, locked).await,
            Operation::Rollback { target, current, restore } => {
                let strategy = self.settings.rollout.runnable();
                let healthy = healthy_on(self.fleet, observed, &self.settings.checks, target).await;
                let instances = self.instances(observed, &healthy, target, strategy, None);
                let mut plan = self.plan(Kind::Rollback, target, current.clone(), instances, observed)?;
                plan.restore = restore.as_ref().map(|r| r.backup.id.clone());
                Ok(Some(Prepared { plan, start: self.settings.instance.start_command(), strategy }))
            }
            Operation::Restart { .. } => {
                let Some(version) = current_version(self.fleet, observed).await else {
                    self.finished_early(
                        started,
                        None,
                        "no release is deployed yet; instances get the change with the first deploy",
                    );
                    return Ok(None);
                };
                let strategy = self.settings.rollout.runnable();
                let instances = self.instances(observed, &BTreeSet::new(), &version, strategy, None);
                let plan = self.plan(Kind::Restart, &version, Some(version.clone()), instances, observed)?;
                Ok(Some(Prepared { plan, start: self.settings.instance.start_command(), strategy }))
            }
            Operation::Converge { kind, regions, stop } => {
                self.prepare_converge(*kind, regions, stop, observed, started).await.map(|plan| {
                    plan.map(|plan| Prepared {
                        plan,
                        start: self.settings.instance.start_command(),
                        strategy: Strategy::Rolling,
                    })
                })
            }
        }
    }

    async fn prepare_deploy(
        &self,
        release: &Release,
        observed: &Observed,
        started: Instant,
        locked: bool,
    ) -> Result<Option<Prepared>, Error> {
        let version = release.version.as_str();
        let strategy = self.settings.rollout.strategy;
        let (healthy, entries) =
            tokio::join!(healthy_on(self.fleet, observed, &self.settings.checks, version), read_history(self.fleet));
        let instances = self.instances(observed, &healthy, version, strategy, None);
        let mut previous = current_from(self.fleet, observed, &entries);
        let installed_everywhere =
            self.fleet.hosts().all(|h| observed.get(&h.name).is_some_and(|s| s.has_release(version)));
        let (history_current, history_previous) = history::current(&entries);
        if instances.is_noop() && installed_everywhere && previous.as_deref() == Some(version) {
            if locked && history_current.as_deref() != Some(version) {
                // Killed after the hosts were switched but before the history said so.
                let record = Record::new("deploy", version, history_current.clone());
                record_history(self.reporter.as_ref(), self.fleet, &record.finished(Status::Complete, None)).await;
            }
            let message = format!("{version} already runs and is healthy everywhere; nothing changed");
            self.finished_early(started, Some(version), &message);
            return Ok(None);
        }
        if previous.as_deref() == Some(version) {
            // An earlier, partial run of this deploy marked some hosts current already;
            // what ran before it is what the history last completed.
            previous = if history_current.as_deref() == Some(version) { history_previous } else { history_current };
        }
        let mut plan = self.plan(Kind::Deploy, version, previous, instances, observed)?;
        let migration = self.settings.migration.command.as_ref().and_then(|command| {
            let host = self.fleet.primary().and_then(|r| r.hosts.first())?;
            Some(Migration {
                host: host.name.clone(),
                command: command.clone(),
                backup: self.settings.migration.backup_first,
            })
        });
        if migration.is_some() {
            plan.replica_gates = self
                .fleet
                .regions
                .iter()
                .filter(|r| !r.primary && self.settings.migration.replicas.contains_key(&r.name))
                .map(|r| r.name.clone())
                .collect();
        }
        // A migration changes what cannot be reverted, so it waits for every host.
        let ahead = migration.is_none() && self.settings.rollout.order == Order::PrimaryFirst;
        let hosts: Vec<(String, String)> = self.fleet.hosts().map(|h| (h.region.clone(), h.name.clone())).collect();
        let present = |host: &str| {
            observed.get(host).is_some_and(|s| match &release.artifact {
                Some(artifact) => s.releases.iter().any(|r| r.version == version && r.sha256 == artifact.sha256),
                None => s.has_release(version),
            })
        };
        plan.ship = plan::ship(&hosts, &plan.instances, present, ahead);
        plan.migration = migration;
        let moved: BTreeSet<&str> = plan.instances.changes().map(|s| s.id.as_str()).collect();
        plan.finish.prune =
            plan::prune(self.settings.keep_releases, observed, &moved, version, plan.previous.as_deref());
        Ok(Some(Prepared { plan, start: release.start.clone(), strategy }))
    }

    async fn prepare_converge(
        &self,
        kind: Kind,
        regions: &[String],
        stop: &[String],
        observed: &Observed,
        started: Instant,
    ) -> Result<Option<Plan>, Error> {
        let Some(version) = current_on_hosts(self.fleet, observed) else {
            self.finished_early(
                started,
                None,
                "no release is deployed yet; instances will start with the next `ferry deploy`",
            );
            return Ok(None);
        };
        let healthy = healthy_on(self.fleet, observed, &self.settings.checks, &version).await;
        let mut instances = self.instances(observed, &healthy, &version, Strategy::Rolling, Some(regions));
        // Scaling only adds instances; replacing unhealthy ones is `ferry deploy`'s job.
        for region in &mut instances.regions {
            region.batches.retain(|b| b.iter().all(|s| s.action == plan::Action::Create));
        }
        let mut plan = self.plan(kind, &version, Some(version.clone()), instances, observed)?;
        let hosts: Vec<(String, String)> = self
            .fleet
            .regions
            .iter()
            .filter(|r| regions.contains(&r.name))
            .flat_map(|r| r.hosts.iter())
            .map(|h| (h.region.clone(), h.name.clone()))
            .collect();
        let present = |host: &str| observed.get(host).is_some_and(|s| s.has_release(&version));
        plan.ship = plan::ship(&hosts, &plan.instances, present, false);
        let doomed: BTreeSet<&str> = stop.iter().map(String::as_str).collect();
        plan.stops = observed
            .values()
            .flat_map(|s| s.instances.iter())
            .filter(|i| doomed.contains(i.record.id.as_str()))
            .map(|i: &InstanceState| StopStep {
                region: i.record.region.clone(),
                host: i.record.host.clone(),
                id: i.record.id.clone(),
                version: i.record.version.clone(),
            })
            .collect();
        Ok(Some(plan))
    }

    /// A plan of `instances` that marks `version` current when it succeeds; refuses
    /// one that would start instances where no free volume waits for them.
    fn plan(
        &self,
        kind: Kind,
        version: &str,
        previous: Option<String>,
        instances: Instances,
        observed: &Observed,
    ) -> Result<Plan, Error> {
        self.refuse_missing_volumes(&instances, observed)?;
        Ok(Plan {
            kind,
            version: version.to_string(),
            previous,
            ship: Vec::new(),
            restore: None,
            migration: None,
            replica_gates: Vec::new(),
            stops: Vec::new(),
            order: self.settings.rollout.order,
            instances,
            finish: Finish { mark_current: true, prune: BTreeMap::new() },
        })
    }

    /// The instances of a rollout of `version` (in `only` regions, when given).
    fn instances(
        &self,
        observed: &Observed,
        healthy: &BTreeSet<String>,
        version: &str,
        strategy: Strategy,
        only: Option<&[String]>,
    ) -> Instances {
        let regions: Vec<RegionSpec> = self
            .fleet
            .regions
            .iter()
            .filter(|r| only.is_none_or(|only| only.contains(&r.name)))
            .map(|r| RegionSpec {
                name: r.name.clone(),
                primary: r.primary && only.is_none(),
                count: r.count,
                hosts: r.hosts.iter().map(|h| h.name.clone()).collect(),
            })
            .collect();
        let mounts: Vec<String> = self.settings.instance.mounts.iter().map(|m| m.source.clone()).collect();
        let inputs = plan::Inputs {
            regions: &regions,
            observed,
            healthy,
            version,
            strategy,
            max_unavailable: self.settings.rollout.max_unavailable,
            mounts: &mounts,
        };
        plan::instances(&inputs, &mut new_instance_id)
    }

    /// Refuses instances that would start where no free volume waits for them,
    /// naming the command that makes one. Nothing has changed when this fails.
    fn refuse_missing_volumes(&self, instances: &Instances, observed: &Observed) -> Result<(), Error> {
        let Some(missing) = instances.missing_volumes.first() else { return Ok(()) };
        let size =
            observed.values().flat_map(|s| s.volumes.iter()).find(|v| v.name == missing.name).map_or(1, |v| v.size_gb);
        let host = self
            .fleet
            .regions
            .iter()
            .find(|r| r.name == missing.region)
            .and_then(|r| r.hosts.first())
            .filter(|h| !h.transport.is_local())
            .map(|h| format!(" --host {}", h.name))
            .unwrap_or_default();
        let command = format!("ferry volumes create {} --region {} --size {size}{host}", missing.name, missing.region);
        Err(Error::Failed {
            message: format!(
                "region {} needs {} more free volume(s) named `{}` for its instances; nothing was changed",
                missing.region, missing.count, missing.name
            ),
            hint: Some(if missing.count > 1 {
                format!("run `{command}` {} times", missing.count)
            } else {
                format!("run `{command}`")
            }),
        })
    }

    fn finished_early(&self, started: Instant, version: Option<&str>, message: &str) {
        self.event(&Event::Finished {
            outcome: Outcome::Succeeded,
            version: version.map(str::to_string),
            previous: version.map(str::to_string),
            message: message.to_string(),
            duration_ms: millis(started.elapsed()),
        });
    }

    /// Sends the first wave: every host of it that lacks the release gets it (a deploy
    /// from its artifact, anything else from a copy of the current release).
    async fn ship_first(&self, plan: &Plan, shipment: Option<&Shipment<'_>>, observed: &Observed) -> Result<(), Error> {
        let first = plan.wave(Wave::First);
        let hosts: Vec<Host> = self.fleet.hosts().filter(|h| first.contains(h.name.as_str())).cloned().collect();
        if let Some(shipment) = shipment {
            return shipment.send(&self.reporter, hosts, observed, None, &|_, _| {}).await;
        }
        let missing: Vec<Host> =
            hosts.into_iter().filter(|h| plan.ship.iter().any(|s| s.host == h.name && !s.present)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        ship::ship_existing(self.settings, &self.reporter, self.fleet, observed, &plan.version, missing).await
    }

    /// The backup and the release_command, then what each replica must replay.
    async fn migrate(&self, plan: &Plan, gates: &mut Gates, started: Instant) -> Result<(), Error> {
        let Some(migration) = &plan.migration else { return Ok(()) };
        let version = &plan.version;
        let failed = |message: String| Event::Finished {
            outcome: Outcome::Failed,
            version: Some(version.clone()),
            previous: plan.previous.clone(),
            message,
            duration_ms: millis(started.elapsed()),
        };
        if migration.backup {
            let taken = migrate::backup(
                self.settings,
                self.reporter.as_ref(),
                self.fleet,
                plan.previous.clone(),
                Some(version.clone()),
            )
            .await;
            if let Err(error) = taken {
                self.event(&failed("the backup failed, so the migration did not run; no instance was changed".into()));
                return Err(error);
            }
        }
        if let Err(error) =
            migrate::release_command(self.settings, &self.reporter, self.fleet, version, &migration.command).await
        {
            let still = plan.previous.as_deref().unwrap_or("the old version");
            self.event(&failed(format!("release_command failed; no instance was changed, {still} still runs")));
            return Err(error);
        }
        if !plan.replica_gates.is_empty() {
            gates.replicas = migrate::replica_waits(self.settings, self.fleet).await?;
        }
        Ok(())
    }

    /// Stops and removes the instances the plan stops, newest first.
    async fn stop_instances(&self, plan: &Plan) -> Result<(), Error> {
        let stop = crate::host::Stop {
            signal: self.settings.instance.kill_signal.clone(),
            timeout: self.settings.instance.kill_timeout,
        };
        for step in &plan.stops {
            let Some(host) = self.fleet.hosts().find(|h| h.name == step.host) else { continue };
            host.stop_instance(&step.id, &stop)
                .await
                .map_err(|source| Error::Host { step: "stopping an instance", source })?;
            host.remove_instance(&step.id)
                .await
                .map_err(|source| Error::Host { step: "removing an instance", source })?;
            self.event(&Event::InstanceStopped {
                region: step.region.clone(),
                host: host.name.clone(),
                instance: step.id.clone(),
            });
        }
        Ok(())
    }

    /// Rolls the plan's instances out while the later waves ship; a rollout that
    /// failed cuts off the uploads nobody needs any more (the host removes what it
    /// half received). Every upload has ended before this returns.
    async fn roll_out(
        &self,
        plan: &Plan,
        observed: &Observed,
        shipment: Option<&Shipment<'_>>,
        start: String,
        mut gates: Gates,
    ) -> outcome::Summary {
        let mut senders = BTreeMap::new();
        let later: Vec<(Wave, Host)> = self
            .fleet
            .hosts()
            .filter_map(|h| {
                let ship = plan.ship.iter().find(|s| s.host == h.name && s.wave != Wave::First)?;
                Some((ship.wave, h.clone()))
            })
            .collect();
        if shipment.is_some() {
            for (_, host) in &later {
                let (tx, rx) = tokio::sync::watch::channel(None);
                senders.insert(host.name.clone(), tx);
                gates.shipped.insert(host.name.clone(), rx);
            }
        }
        let heard = |host: &str, result: Result<(), String>| {
            if let Some(tx) = senders.get(host) {
                tx.send_replace(Some(result));
            }
        };
        let source = self
            .fleet
            .hosts()
            .find(|h| h.transport.is_local() && plan.wave(Wave::First).contains(h.name.as_str()))
            .cloned();
        let (failed, mut on_failure) = tokio::sync::watch::channel(false);
        let shipping = async {
            let Some(shipment) = shipment else { return };
            // Each wave reports every host's outcome; a failure halts the rollout,
            // which then cuts off the rest.
            for wave in [Wave::Primary, Wave::Others] {
                let hosts: Vec<Host> = later.iter().filter(|(w, _)| *w == wave).map(|(_, h)| h.clone()).collect();
                let _ = shipment.send(&self.reporter, hosts, observed, source.clone(), &heard).await;
            }
        };
        let rollout = Rollout::new(Setup {
            hosts: self.fleet.hosts().map(|h| (h.name.clone(), h.clone())).collect(),
            spec: Spec {
                app: self.settings.app.clone(),
                primary: self.settings.primary.clone(),
                instance: self.settings.instance.clone(),
                start,
                checks: self.settings.checks.clone(),
                wait_timeout: self.settings.rollout.wait_timeout,
            },
            version: plan.version.clone(),
            reporter: Arc::clone(&self.reporter),
            no_revert: self.settings.rollout.no_revert,
            order: plan.order,
            gates,
            ports: self.port_picker(observed, &plan.instances).await,
            primary_addr: self.primary_addr(observed),
        });
        let ((), summary) = tokio::join!(
            async {
                tokio::select! {
                    () = shipping => {}
                    _ = on_failure.wait_for(|failed| *failed) => {}
                }
            },
            async {
                let summary = rollout.execute(plan.instances.regions.clone()).await;
                failed.send_replace(summary.failure.is_some());
                summary
            }
        );
        summary
    }

    /// `address:port` of a running primary-region instance, for `FERRY_PRIMARY_ADDR`.
    fn primary_addr(&self, observed: &Observed) -> Option<String> {
        let primary = &self.settings.primary;
        self.fleet.hosts().filter(|h| &h.region == primary).find_map(|h| {
            observed
                .get(&h.name)?
                .instances
                .iter()
                .find(|i| i.alive && &i.record.region == primary)
                .map(|i| format!("{}:{}", h.address(), i.record.port))
        })
    }

    /// A picker that avoids every port recorded for an instance or listening on a host
    /// where the plan creates an instance (read from SSH hosts only then).
    async fn port_picker(&self, observed: &Observed, instances: &Instances) -> PortPicker {
        let creating: BTreeSet<&str> =
            instances.changes().filter(|step| step.previous.is_none()).map(|step| step.host.as_str()).collect();
        let hosts =
            self.fleet.hosts().filter(|h| !h.transport.is_local() && creating.contains(h.name.as_str())).cloned();
        let listening = crate::host::on_each(hosts, |host| async move { host.listening().await }).await;
        let mut taken: BTreeSet<(String, u16)> = BTreeSet::new();
        for state in observed.values() {
            taken.extend(state.instances.iter().map(|i| (i.record.host.clone(), i.record.port)));
        }
        for (name, ports) in listening {
            match ports {
                Ok(ports) => taken.extend(ports.into_iter().map(|p| (name.clone(), p))),
                Err(e) => self.event(&Event::Warning {
                    message: format!(
                        "could not list the ports in use on `{name}` ({e}); new instances there get a random free-looking port"
                    ),
                }),
            }
        }
        PortPicker::new(taken)
    }
}

/// A plan as the steps `--dry-run` prints.
pub fn plan_items(plan: &Plan) -> Vec<PlanItem> {
    let mut items = Vec::new();
    for ship in &plan.ship {
        items.push(PlanItem::Ship {
            host: ship.host.clone(),
            region: ship.region.clone(),
            wave: format!("{:?}", ship.wave).to_lowercase(),
            action: if ship.present { "present" } else { "upload" }.into(),
        });
    }
    if let Some(id) = &plan.restore {
        items.push(PlanItem::RestoreBackup { id: id.clone() });
    }
    if let Some(migration) = &plan.migration {
        if migration.backup {
            items.push(PlanItem::Backup { host: migration.host.clone() });
        }
        items.push(PlanItem::ReleaseCommand { host: migration.host.clone(), command: migration.command.clone() });
    }
    items.extend(plan.replica_gates.iter().map(|region| PlanItem::ReplicaGate { region: region.clone() }));
    for stop in &plan.stops {
        items.push(PlanItem::Stop {
            region: stop.region.clone(),
            host: stop.host.clone(),
            instance: stop.id.clone(),
            version: stop.version.clone(),
        });
    }
    for region in &plan.instances.regions {
        for (n, batch) in region.batches.iter().enumerate() {
            for step in batch {
                let action = match step.action {
                    plan::Action::Create => "create",
                    plan::Action::Replace => "replace",
                    plan::Action::Keep => "keep",
                };
                items.push(PlanItem::Instance {
                    region: step.region.clone(),
                    host: step.host.clone(),
                    instance: step.id.clone(),
                    action: action.into(),
                    batch: n + 1,
                    from: step.previous.as_ref().map(|p| p.version.clone()),
                    to: step.to.clone(),
                });
            }
        }
        for step in &region.unchanged {
            items.push(PlanItem::Instance {
                region: step.region.clone(),
                host: step.host.clone(),
                instance: step.id.clone(),
                action: "keep".into(),
                batch: 0,
                from: Some(step.to.clone()),
                to: step.to.clone(),
            });
        }
    }
    let prune = plan
        .finish
        .prune
        .iter()
        .flat_map(|(host, versions)| versions.iter().map(|v| Pruned { host: host.clone(), version: v.clone() }))
        .collect();
    items.push(PlanItem::Finish {
        record: plan.kind.as_str().into(),
        version: plan.version.clone(),
        mark_current: plan.finish.mark_current,
        prune,
    });
    items
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
    bytes.iter().fold(String::with_capacity(14), |mut id, b| {
        use std::fmt::Write as _;
        let _ = write!(id, "{b:02x}");
        id
    })
}
