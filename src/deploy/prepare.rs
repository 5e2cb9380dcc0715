//! From an operation and the fleet as observed to its [`Plan`]: what a deploy,
//! rollback, restart or converge would do, every phase decided here from data.
//! Nothing changes on a host while preparing, except repairing a killed deploy's
//! missing history line when the lock is held.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Strategy;
use crate::error::Error;
use crate::history::{self, Record, Status};
use crate::settings::Order;

use super::finish::record_history;
use super::observe::{current_from, current_on_hosts, current_version, healthy_on, read_history, Observed};
use super::plan::{self, Finish, Instances, Kind, Migration, Plan, RegionSpec, StopStep};
use super::{new_instance_id, Engine, Operation, Release, Stops};

/// What preparing an operation came to.
pub(super) enum Prepared {
    /// A plan, the start command its instances run, and the strategy it rolls by.
    Plan { plan: Box<Plan>, start: String, strategy: Strategy },
    /// Nothing to do: why (the user's last line), and the version that runs.
    Nothing { message: String, version: Option<String> },
}

impl Engine<'_> {
    /// What `op` comes to against `observed`. With `locked` (a real run, not a
    /// preview), a deploy of what already runs is nothing to do, and a killed
    /// deploy's missing history line is repaired.
    pub(super) async fn prepare(&self, op: &Operation, observed: &Observed, locked: bool) -> Result<Prepared, Error> {
        let start = self.settings.instance.start_command();
        match op {
            Operation::Deploy(release) => self.prepare_deploy(release, observed, locked).await,
            Operation::Rollback { target, current, restore } => {
                let strategy = self.settings.rollout.runnable();
                let healthy = healthy_on(self.fleet, observed, self.settings, target).await;
                let instances = self.instances(observed, &healthy, (target, &start), strategy, None);
                let mut plan = self.plan(Kind::Rollback, target, current.clone(), instances, observed)?;
                plan.restore = restore.as_ref().map(|r| r.backup.id.clone());
                Ok(Prepared::Plan { plan: Box::new(plan), start, strategy })
            }
            Operation::Restart { .. } => {
                let Some(version) = current_version(self.fleet, observed).await else {
                    return Ok(Prepared::Nothing {
                        message: "no release is deployed yet; instances get the change with the first deploy".into(),
                        version: None,
                    });
                };
                let strategy = self.settings.rollout.runnable();
                let instances = self.instances(observed, &BTreeSet::new(), (&version, &start), strategy, None);
                let plan = self.plan(Kind::Restart, &version, Some(version.clone()), instances, observed)?;
                Ok(Prepared::Plan { plan: Box::new(plan), start, strategy })
            }
            Operation::Converge { kind, regions, stop, done } => {
                let strategy = Strategy::Rolling;
                Ok(match self.prepare_converge(*kind, regions, stop, observed).await? {
                    Ok(plan) => Prepared::Plan { plan: Box::new(plan), start, strategy },
                    // Removing a region that runs nothing is done once fly.toml says so.
                    Err(message) if *kind == Kind::RegionsRemove => {
                        Prepared::Nothing { message: done.clone().unwrap_or(message), version: None }
                    }
                    Err(message) => Prepared::Nothing { message, version: None },
                })
            }
        }
    }

    async fn prepare_deploy(&self, release: &Release, observed: &Observed, locked: bool) -> Result<Prepared, Error> {
        let version = release.version.as_str();
        let strategy = self.settings.rollout.strategy;
        let (healthy, entries) =
            tokio::join!(healthy_on(self.fleet, observed, self.settings, version), read_history(self.fleet));
        let instances = self.instances(observed, &healthy, (version, &release.start), strategy, None);
        let mut previous = current_from(self.fleet, observed, &entries);
        let installed_everywhere =
            self.fleet.hosts().all(|h| observed.get(&h.name).is_some_and(|s| s.has_release(version)));
        let (history_current, history_previous) = history::current(&entries);
        let clean = orphans(observed).is_empty() && self.ungrouped(observed).is_empty();
        if locked && instances.is_noop() && clean && installed_everywhere && previous.as_deref() == Some(version) {
            if history_current.as_deref() != Some(version) {
                // Killed after the hosts were switched but before the history said so.
                let record = Record::new("deploy", version, history_current.clone());
                record_history(self.reporter.as_ref(), self.fleet, &record.finished(Status::Complete, None)).await;
            }
            let message = format!("{version} already runs and is healthy everywhere; nothing changed");
            return Ok(Prepared::Nothing { message, version: Some(version.to_string()) });
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
        Ok(Prepared::Plan { plan: Box::new(plan), start: release.start.clone(), strategy })
    }

    /// The plan of a converge, or why there is nothing to do. New instances start on
    /// the current release; existing ones are left as they are (replacing them is
    /// `ferry deploy`'s job), except those stopped.
    async fn prepare_converge(
        &self,
        kind: Kind,
        regions: &[String],
        stop: &Stops,
        observed: &Observed,
    ) -> Result<Result<Plan, String>, Error> {
        let stops: Vec<StopStep> = observed
            .values()
            .flat_map(|s| s.instances.iter())
            .filter(|i| match stop {
                Stops::Ids(ids) => ids.contains(&i.record.id),
                Stops::Region(region) => &i.record.region == region,
            })
            .map(StopStep::of)
            .collect();
        let current = current_on_hosts(self.fleet, observed);
        let Some(version) = current.clone().or_else(|| stops.first().map(|s| s.version.clone())) else {
            return Ok(Err("no release is deployed yet; instances will start with the next `ferry deploy`".into()));
        };
        // Without a current release only the stops happen.
        let regions: &[String] = if current.is_some() { regions } else { &[] };
        let healthy = healthy_on(self.fleet, observed, self.settings, &version).await;
        let mut instances = self.instances(
            observed,
            &healthy,
            (&version, &self.settings.instance.start_command()),
            Strategy::Rolling,
            Some(regions),
        );
        let doomed: BTreeSet<&str> = stops.iter().map(|s| s.id.as_str()).collect();
        for region in &mut instances.regions {
            region.unchanged.retain(|s| !doomed.contains(s.id.as_str()));
        }
        let mut plan = self.plan(kind, &version, Some(version.clone()), instances, observed)?;
        // A converge moves no instance to another release: `current` stays as it is.
        plan.finish.mark_current = false;
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
        let orphaned: BTreeSet<String> = plan.stops.iter().map(|s| s.id.clone()).collect();
        plan.stops.extend(stops.into_iter().filter(|s| !orphaned.contains(&s.id)));
        Ok(Ok(plan))
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
        let stops = orphans(observed);
        let retire: Vec<StopStep> =
            self.ungrouped(observed).into_iter().filter(|s| !stops.iter().any(|o| o.id == s.id)).collect();
        // Instances from before `[processes]` named the default group otherwise keep
        // serving until their successors have taken over.
        let legacy = observed
            .values()
            .flat_map(|s| s.instances.iter())
            .any(|i| i.record.group == crate::config::DEFAULT_GROUP && retire.iter().any(|r| r.id == i.record.id));
        let local = super::doors::local_addresses(self.fleet);
        let mut doors = Vec::new();
        for host in self.fleet.hosts() {
            let mut listen = super::doors::for_host(&self.settings.proxy, host, &local)?;
            for door in listen.iter_mut().filter(|d| legacy && d.groups.contains(&self.settings.default_group)) {
                door.groups.push(crate::config::DEFAULT_GROUP.to_string());
            }
            if !listen.is_empty() {
                doors.push(plan::Doors { host: host.name.clone(), region: host.region.clone(), listen });
            }
        }
        Ok(Plan {
            doors,
            in_place: self
                .settings
                .groups
                .iter()
                .filter_map(|g| Some((g.name.clone(), g.not_beside?.to_string())))
                .collect(),
            kind,
            version: version.to_string(),
            previous,
            ship: Vec::new(),
            restore: None,
            migration: None,
            replica_gates: Vec::new(),
            stops,
            retire,
            order: self.settings.rollout.order,
            instances,
            finish: Finish { mark_current: true, prune: BTreeMap::new() },
        })
    }

    /// The instances of a rollout of `version`; in `only` regions, when given, where
    /// only missing instances are created. `start` is the default group's start
    /// command (checked against the release); the other groups run their own.
    fn instances(
        &self,
        observed: &Observed,
        healthy: &BTreeSet<String>,
        (version, start): (&str, &str),
        strategy: Strategy,
        only: Option<&[String]>,
    ) -> Instances {
        let groups: Vec<plan::GroupInputs> = self
            .settings
            .groups
            .iter()
            .map(|group| {
                let start =
                    if group.name == self.settings.default_group { start.to_string() } else { group.start_command() };
                let beside = group.not_beside.is_none() && strategy != Strategy::Immediate;
                plan::GroupInputs {
                    name: group.name.clone(),
                    strategy: match strategy {
                        Strategy::Bluegreen if !beside => Strategy::Rolling,
                        other => other,
                    },
                    mounts: group.instance.mounts.iter().map(|m| m.source.clone()).collect(),
                    identity: super::instance::identity(&group.instance, &start, &group.checks),
                    beside,
                }
            })
            .collect();
        // Instances a killed rollout started that never took traffic are stopped
        // first (see `orphans`), not planned for; so are those of a process group
        // that is no longer configured.
        let mut observed = observed.clone();
        for state in observed.values_mut() {
            let routes = state.routes;
            state.instances.retain(|i| (!routes || i.routed) && groups.iter().any(|g| g.name == i.record.group));
        }
        let observed = &observed;
        let regions: Vec<RegionSpec> = self
            .fleet
            .regions
            .iter()
            .filter(|r| only.is_none_or(|only| only.contains(&r.name)))
            .map(|r| RegionSpec {
                name: r.name.clone(),
                primary: r.primary && only.is_none(),
                counts: r.counts.clone(),
                hosts: r.hosts.iter().map(|h| h.name.clone()).collect(),
            })
            .collect();
        let fleet_current = current_on_hosts(self.fleet, observed);
        let inputs = plan::Inputs {
            regions: &regions,
            observed,
            healthy,
            version,
            max_unavailable: self.settings.rollout.max_unavailable,
            replace: only.is_none(),
            groups: &groups,
            fleet_current: fleet_current.as_deref(),
        };
        plan::instances(&inputs, &mut new_instance_id)
    }

    /// Instances of a process group fly.toml no longer has: stopped, as Fly does when
    /// a deploy drops a group.
    fn ungrouped(&self, observed: &Observed) -> Vec<StopStep> {
        let known = |group: &str| self.settings.groups.iter().any(|g| g.name == group);
        observed
            .values()
            .flat_map(|s| s.instances.iter())
            .filter(|i| !known(&i.record.group))
            .map(StopStep::of)
            .collect()
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
}

/// Instances outside their host's routing table: started beside another one by a
/// rollout that was killed before it switched to them. They take no traffic, so they
/// are stopped before anything else, and the rollout starts over cleanly.
fn orphans(observed: &Observed) -> Vec<StopStep> {
    observed
        .values()
        .filter(|s| s.routes)
        .flat_map(|s| s.instances.iter())
        .filter(|i| !i.routed)
        .map(StopStep::of)
        .collect()
}
