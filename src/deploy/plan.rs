//! Planning an operation: desired state (a version, a count per region) against
//! observed state (what each host holds) gives a [`Plan`] with every phase as data:
//! what each host is sent and when, the backup and release_command, the replica
//! gates, the instances in batches, what is stopped, and how the operation finishes
//! (what is recorded, marked current, pruned). Pure: no I/O, so `--dry-run` prints
//! exactly what would run and tests check plans directly.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::config::{MaxUnavailable, Strategy};
use crate::host::proto::DoorKind;
use crate::host::{HostState, Identity, InstanceRecord};
use crate::report::{PlanItem, Pruned};
use crate::settings::Order;

/// What a region looks like to the planner.
#[derive(Debug, Clone)]
pub struct RegionSpec {
    pub name: String,
    pub primary: bool,
    /// How many instances of each process group, in the order they roll out.
    pub counts: Vec<(String, u32)>,
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Already on the target version and healthy.
    Keep,
    /// Stop the old process, start the target version in its place.
    Replace,
    /// A new instance.
    Create,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub action: Action,
    pub region: String,
    /// The process group of its instance.
    pub group: String,
    pub host: String,
    pub id: String,
    /// The instance as it was (for `Replace`): its port, id and age.
    pub previous: Option<InstanceRecord>,
    /// The version a revert puts it back on: what its host last made current (not what
    /// the instance ran, which a killed run of this very rollout may have changed).
    /// `None`: nothing completed on the host, so a revert removes the instance.
    pub revert_to: Option<String>,
    pub was_alive: bool,
    pub to: String,
    /// Replaced beside its old instance: `id` is a new instance, started next to the
    /// old one (`previous`), which is drained and stopped once the new one takes
    /// traffic. Otherwise a replacement stops the old process first and keeps `id`.
    pub beside: bool,
    /// Why an instance already on the target version is replaced: what of its
    /// settings changed (`env`, `secrets`, `start command`, `checks`), or that it is
    /// down or failing.
    pub why: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegionPlan {
    pub region: String,
    pub primary: bool,
    pub batches: Vec<Vec<Step>>,
    pub unchanged: Vec<Step>,
    /// The replacements of a batch switch together once all are ready (bluegreen).
    pub together: bool,
    /// The batch that is the canary (`canary`: its one replacement, beside its old
    /// instance, may be watched under a share of the traffic first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<usize>,
}

/// The instances of an operation: each region's batches.
#[derive(Debug, Clone, Serialize)]
pub struct Instances {
    pub regions: Vec<RegionPlan>,
    /// New instances that cannot be placed for want of a free volume.
    pub missing_volumes: Vec<MissingVolumes>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MissingVolumes {
    pub region: String,
    pub name: String,
    pub count: usize,
}

impl Instances {
    pub fn is_noop(&self) -> bool {
        self.regions.iter().all(|r| r.batches.is_empty())
    }

    /// Every step that changes an instance, in batch order.
    pub fn changes(&self) -> impl Iterator<Item = &Step> {
        self.regions.iter().flat_map(|r| r.batches.iter().flatten())
    }

    #[cfg(test)]
    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.regions.iter().flat_map(|r| r.unchanged.iter().chain(r.batches.iter().flatten()))
    }
}

/// What the planner needs of one process group.
#[derive(Debug, Clone)]
pub struct GroupInputs {
    pub name: String,
    /// The strategy its replacements follow (`rolling` for a group whose instances
    /// cannot run side by side, when `bluegreen` or `canary` was asked for).
    pub strategy: Strategy,
    /// Volume names every instance of it mounts (`[mounts]`); new instances go only
    /// where a free volume of each is.
    pub mounts: Vec<String>,
    /// What its instances should run with (the secrets' digest is each host's).
    pub identity: Identity,
    /// Whether replacements start beside the old instances (a front door routes to
    /// the group, and no volume only one instance may hold).
    pub beside: bool,
}

pub struct Inputs<'a> {
    pub regions: &'a [RegionSpec],
    pub observed: &'a BTreeMap<String, HostState>,
    /// Instances on the target version that answered their checks while observing.
    pub healthy: &'a BTreeSet<String>,
    pub version: &'a str,
    pub max_unavailable: MaxUnavailable,
    /// Whether instances that exist are replaced (false: only new ones are created,
    /// as when scaling).
    pub replace: bool,
    /// By process group: how its instances are planned.
    pub groups: &'a [GroupInputs],
    /// What the fleet's hosts say is current: what a revert goes back to on a host
    /// that never marked a release itself (its instances came from `scale` or
    /// `regions add`), when the host has it.
    pub fleet_current: Option<&'a str>,
}

/// Plans the instances of a rollout of `version`: every existing instance that is not
/// already healthy on it is replaced, and each region is filled up to its count.
pub fn instances(inputs: &Inputs<'_>, new_id: &mut dyn FnMut() -> String) -> Instances {
    let mut missing_volumes = Vec::new();
    let regions =
        inputs.regions.iter().map(|region| plan_region(inputs, region, new_id, &mut missing_volumes)).collect();
    Instances { regions, missing_volumes }
}

/// Free volumes per host for a region: the fewest free of any mounted name (an
/// instance needs one of each). `None` when nothing is mounted.
fn free_volumes(inputs: &Inputs<'_>, group: &GroupInputs, region: &RegionSpec) -> Option<BTreeMap<String, usize>> {
    if group.mounts.is_empty() {
        return None;
    }
    let mut free = BTreeMap::new();
    for host in &region.hosts {
        let volumes = inputs.observed.get(host).map(|s| s.volumes.as_slice()).unwrap_or_default();
        let n = group
            .mounts
            .iter()
            .map(|name| {
                volumes.iter().filter(|v| &v.name == name && v.region == region.name && v.attached.is_none()).count()
            })
            .min()
            .unwrap_or(0);
        free.insert(host.clone(), n);
    }
    Some(free)
}

/// A region's plan: each process group's batches after the one before's.
fn plan_region(
    inputs: &Inputs<'_>,
    region: &RegionSpec,
    new_id: &mut dyn FnMut() -> String,
    missing: &mut Vec<MissingVolumes>,
) -> RegionPlan {
    let mut plan = RegionPlan {
        region: region.name.clone(),
        primary: region.primary,
        batches: Vec::new(),
        unchanged: Vec::new(),
        together: false,
        canary: None,
    };
    for (name, count) in &region.counts {
        let Some(group) = inputs.groups.iter().find(|g| &g.name == name) else { continue };
        let (batches, unchanged) = plan_group(inputs, group, region, *count, new_id, missing);
        plan.unchanged.extend(unchanged);
        if group.strategy == Strategy::Bluegreen && group.beside {
            plan.together = true;
        }
        // The canary is the first batch of replacements (new instances come first).
        if plan.canary.is_none() && group.strategy == Strategy::Canary && group.beside {
            plan.canary = batches
                .iter()
                .position(|b| b.iter().all(|s| s.action == Action::Replace))
                .map(|n| n + plan.batches.len());
        }
        plan.batches.extend(batches);
    }
    plan
}

/// One process group's batches in a region, and its instances that stay.
fn plan_group(
    inputs: &Inputs<'_>,
    group: &GroupInputs,
    region: &RegionSpec,
    count: u32,
    new_id: &mut dyn FnMut() -> String,
    missing: &mut Vec<MissingVolumes>,
) -> (Vec<Vec<Step>>, Vec<Step>) {
    let mut unchanged = Vec::new();
    let mut changes = Vec::new();
    let mut per_host: BTreeMap<&str, usize> = region.hosts.iter().map(|h| (h.as_str(), 0)).collect();
    let mut existing = 0usize;
    for host in &region.hosts {
        let Some(state) = inputs.observed.get(host) else { continue };
        let mine = state.instances.iter().filter(|i| i.record.region == region.name && i.record.group == group.name);
        for instance in mine {
            existing += 1;
            *per_host.entry(host.as_str()).or_default() += 1;
            let why = replace_reason(inputs, group, state, instance);
            let keep = !inputs.replace || why.is_none();
            let beside = !keep && group.beside;
            let step = Step {
                action: if keep { Action::Keep } else { Action::Replace },
                region: region.name.clone(),
                group: group.name.clone(),
                host: host.clone(),
                id: if beside { new_id() } else { instance.record.id.clone() },
                previous: Some(instance.record.clone()),
                revert_to: state
                    .current
                    .as_deref()
                    .or(inputs.fleet_current)
                    .filter(|v| state.has_release(v))
                    .map(str::to_string),
                was_alive: instance.alive,
                to: inputs.version.to_string(),
                beside,
                why: why.filter(|_| inputs.replace),
            };
            if keep {
                unchanged.push(step);
            } else {
                changes.push(step);
            }
        }
    }
    // Dead instances go first: replacing them restores capacity instead of taking it.
    changes.sort_by_key(|s| s.was_alive);
    let mut free = free_volumes(inputs, group, region);
    if let Some(free) = free.as_mut() {
        // An instance replaced after `[mounts]` was added holds no volume yet: it takes a
        // free one on its host, or the plan cannot be carried out.
        for step in &changes {
            let volumes = inputs.observed.get(&step.host).map(|s| s.volumes.as_slice()).unwrap_or_default();
            let lacking = group.mounts.iter().find(|name| {
                !volumes.iter().any(|v| &v.name == *name && v.attached.as_deref() == Some(step.id.as_str()))
            });
            let Some(name) = lacking else { continue };
            match free.get_mut(&step.host) {
                Some(n) if *n > 0 => *n -= 1,
                _ => missing.push(MissingVolumes { region: region.name.clone(), name: name.clone(), count: 1 }),
            }
        }
    }
    let mut creates = Vec::new();
    for n in existing..count as usize {
        let host = match free.as_mut() {
            None => place(&per_host),
            Some(free) => {
                let candidates: BTreeMap<&str, usize> = per_host
                    .iter()
                    .filter(|(h, _)| free.get(**h).copied().unwrap_or(0) > 0)
                    .map(|(h, c)| (*h, *c))
                    .collect();
                let host = place(&candidates);
                if let Some(host) = host {
                    *free.entry(host.to_string()).or_default() -= 1;
                }
                host
            }
        };
        let Some(host) = host else {
            for name in &group.mounts {
                missing.push(MissingVolumes {
                    region: region.name.clone(),
                    name: name.clone(),
                    count: count as usize - n,
                });
            }
            break;
        };
        *per_host.entry(host).or_default() += 1;
        creates.push(Step {
            action: Action::Create,
            region: region.name.clone(),
            group: group.name.clone(),
            host: host.to_string(),
            id: new_id(),
            previous: None,
            revert_to: None,
            was_alive: false,
            to: inputs.version.to_string(),
            beside: false,
            why: None,
        });
    }
    (batch(changes, creates, group.strategy, inputs.max_unavailable), unchanged)
}

/// Why an existing instance must be replaced, `None` when it stays: another version,
/// not running, failing its checks, or on the target version with other settings.
fn replace_reason(
    inputs: &Inputs<'_>,
    group: &GroupInputs,
    state: &HostState,
    instance: &crate::host::InstanceState,
) -> Option<String> {
    if instance.record.version != inputs.version {
        return Some(format!("runs {}", instance.record.version));
    }
    if !instance.alive {
        return Some("it is not running".into());
    }
    if !inputs.healthy.contains(&instance.record.id) {
        return Some("it fails its checks".into());
    }
    let wanted = Identity { secrets: state.secrets.clone().unwrap_or_default(), ..group.identity.clone() };
    let changed = instance.record.config.differences(&wanted);
    (!changed.is_empty()).then(|| format!("its {} changed", changed.join(", ")))
}

/// The host with the fewest instances (ties: first in config order).
fn place<'a>(per_host: &BTreeMap<&'a str, usize>) -> Option<&'a str> {
    per_host.iter().min_by_key(|(_, n)| **n).map(|(h, _)| *h)
}

/// Orders the changes into batches. New instances take nothing down, so they all go
/// in one batch first (they add capacity before anything is stopped); replacements
/// follow `max_unavailable` at a time, after a single canary when asked.
fn batch(
    changes: Vec<Step>,
    creates: Vec<Step>,
    strategy: Strategy,
    max_unavailable: MaxUnavailable,
) -> Vec<Vec<Step>> {
    let mut batches = Vec::new();
    if !creates.is_empty() {
        batches.push(creates);
    }
    let mut rest = changes.into_iter().peekable();
    if strategy == Strategy::Canary && rest.peek().is_some() {
        batches.push(rest.next().into_iter().collect());
    }
    let rest: Vec<Step> = rest.collect();
    if rest.is_empty() {
        return batches;
    }
    let size = match strategy {
        Strategy::Immediate | Strategy::Bluegreen => rest.len(),
        _ => max_unavailable.per_batch(rest.len()),
    };
    let mut rest = rest.into_iter();
    loop {
        let chunk: Vec<Step> = rest.by_ref().take(size.max(1)).collect();
        if chunk.is_empty() {
            break;
        }
        batches.push(chunk);
    }
    batches
}

/// The front door of one host.
#[derive(Debug, Clone, Serialize)]
pub struct Doors {
    pub host: String,
    pub region: String,
    pub listen: Vec<crate::host::proto::Door>,
}

/// Which operation a plan is for; history records it under this name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    Deploy,
    Rollback,
    Restart,
    Scale,
    RegionsAdd,
    RegionsRemove,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deploy => "deploy",
            Kind::Rollback => "rollback",
            Kind::Restart => "restart",
            Kind::Scale => "scale",
            Kind::RegionsAdd => "regions add",
            Kind::RegionsRemove => "regions remove",
        }
    }

    /// Whether the operation brings a new release (and so prunes old ones).
    pub fn ships_new_release(self) -> bool {
        self == Kind::Deploy
    }
}

/// When a host gets the release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Wave {
    /// Before anything else: the hosts of the primary region's first batch (or every
    /// host, when a migration or `primary_last` needs them all first).
    First,
    /// The rest of the primary region, while its first batch rolls out.
    Primary,
    /// The other regions, after the primary region's hosts.
    Others,
}

/// What one host is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ship {
    pub host: String,
    pub region: String,
    pub wave: Wave,
    /// The host already holds this very release: nothing is sent.
    pub present: bool,
}

/// The release_command, run once before any instance changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Migration {
    pub host: String,
    pub command: String,
    /// A pg_dump first.
    pub backup: bool,
}

/// An instance stopped and removed (scaling down, removing a region).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StopStep {
    pub region: String,
    pub host: String,
    pub id: String,
    pub version: String,
}

impl StopStep {
    /// Stopping `instance`.
    pub fn of(instance: &crate::host::InstanceState) -> Self {
        let record = &instance.record;
        StopStep {
            region: record.region.clone(),
            host: record.host.clone(),
            id: record.id.clone(),
            version: record.version.clone(),
        }
    }
}

/// How a successful operation ends on the hosts, in one round trip each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Finish {
    pub mark_current: bool,
    /// By host: releases pruned.
    pub prune: BTreeMap<String, Vec<String>>,
}

/// Everything an operation will do, in order.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Each host's front door, opened before anything changes.
    pub doors: Vec<Doors>,
    /// By process group: why its replacements stop the old process first, when they
    /// do whatever the strategy (no front door, a volume).
    pub in_place: BTreeMap<String, String>,
    pub kind: Kind,
    pub version: String,
    pub previous: Option<String>,
    pub ship: Vec<Ship>,
    /// A backup restored first (`rollback --restore-backup`): its id.
    pub restore: Option<String>,
    pub migration: Option<Migration>,
    /// Regions whose read replica must replay the migration before they change.
    pub replica_gates: Vec<String>,
    pub stops: Vec<StopStep>,
    /// Instances of process groups fly.toml no longer has: stopped once the rollout
    /// succeeded (the new groups' instances serve first).
    pub retire: Vec<StopStep>,
    #[serde(skip)]
    pub order: Order,
    pub instances: Instances,
    pub finish: Finish,
}

impl Plan {
    /// Nothing to ship, run, stop or change.
    pub fn is_noop(&self) -> bool {
        self.instances.is_noop()
            && self.stops.is_empty()
            && self.retire.is_empty()
            && self.migration.is_none()
            && self.restore.is_none()
            && self.ship.iter().all(|s| s.present)
    }

    /// The plan as the steps `--dry-run` prints.
    pub fn items(&self) -> Vec<PlanItem> {
        let plan = self;
        let mut items = Vec::new();
        for doors in &plan.doors {
            items.push(PlanItem::Doors {
                host: doors.host.clone(),
                region: doors.region.clone(),
                listen: doors
                    .listen
                    .iter()
                    .map(|d| {
                        let kind = match (d.kind, d.tls.is_some()) {
                            (DoorKind::Http, true) => "https",
                            (DoorKind::Http, false) if d.redirect_https.is_some() => "http, redirected to https",
                            (DoorKind::Http, false) => "http",
                            (DoorKind::Tcp, _) => "tcp",
                        };
                        format!("{} ({kind})", d.listen)
                    })
                    .collect(),
            });
        }
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
        for stop in plan.stops.iter().chain(&plan.retire) {
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
                        Action::Create => "create",
                        Action::Replace => "replace",
                        Action::Keep => "keep",
                    };
                    let how = (step.action == Action::Replace).then(|| {
                        if step.beside && region.together {
                            "beside the old one; the region switches at once when all are ready".to_string()
                        } else if step.beside {
                            "beside the old one, then switched".to_string()
                        } else {
                            let why =
                                plan.in_place.get(&step.group).map_or("the strategy is `immediate`", String::as_str);
                            format!("stop, then start ({why})")
                        }
                    });
                    items.push(PlanItem::Instance {
                        region: step.region.clone(),
                        group: step.group.clone(),
                        host: step.host.clone(),
                        instance: step.id.clone(),
                        action: action.into(),
                        how,
                        batch: n + 1,
                        from: step.previous.as_ref().map(|p| p.version.clone()),
                        to: step.to.clone(),
                        why: step.why.clone().filter(|_| step.previous.as_ref().is_some_and(|p| p.version == step.to)),
                    });
                }
            }
            for step in &region.unchanged {
                items.push(PlanItem::Instance {
                    region: step.region.clone(),
                    group: step.group.clone(),
                    host: step.host.clone(),
                    instance: step.id.clone(),
                    action: "keep".into(),
                    how: None,
                    batch: 0,
                    from: Some(step.to.clone()),
                    to: step.to.clone(),
                    why: None,
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

    /// The hosts of `wave` that need the release.
    pub fn wave(&self, wave: Wave) -> BTreeSet<&str> {
        self.ship.iter().filter(|s| s.wave == wave).map(|s| s.host.as_str()).collect()
    }
}

/// What the hosts are sent and when. `hosts` are `(region, host)` of every host that
/// must hold the release, the primary's first. With `ahead` (no migration, primary
/// first) the primary region's first batch gets it first, the rest of the primary
/// region next, the other regions last; otherwise every host gets it first.
pub fn ship(hosts: &[(String, String)], instances: &Instances, has: impl Fn(&str) -> bool, ahead: bool) -> Vec<Ship> {
    let primary = instances.regions.iter().find(|r| r.primary).map(|r| r.region.as_str());
    let first: BTreeSet<&str> = instances
        .regions
        .iter()
        .filter(|r| r.primary)
        .filter_map(|r| r.batches.first())
        .flatten()
        .map(|step| step.host.as_str())
        .collect();
    hosts
        .iter()
        .map(|(region, host)| {
            let wave = if !ahead || first.contains(host.as_str()) {
                Wave::First
            } else if Some(region.as_str()) == primary {
                Wave::Primary
            } else {
                Wave::Others
            };
            Ship { host: host.clone(), region: region.clone(), wave, present: has(host) }
        })
        .collect()
}

/// Releases beyond `keep` on each host, newest first, once every instance in `moved`
/// runs `version`: never `version` or `previous` (what `ferry rollback` goes back to),
/// never one an instance still runs. Decided from the hosts as observed under the
/// lock, which nothing but this operation changes.
pub fn prune(
    keep: usize,
    observed: &BTreeMap<String, HostState>,
    moved: &BTreeSet<&str>,
    version: &str,
    previous: Option<&str>,
) -> BTreeMap<String, Vec<String>> {
    observed
        .iter()
        .map(|(host, state)| {
            let mut kept: BTreeSet<&str> = state
                .instances
                .iter()
                .filter(|i| !moved.contains(i.record.id.as_str()))
                .map(|i| i.record.version.as_str())
                .collect();
            kept.insert(version);
            kept.extend(previous);
            let mut newest_first: Vec<&str> = state.releases.iter().rev().map(|r| r.version.as_str()).collect();
            if !newest_first.contains(&version) {
                newest_first.insert(0, version);
            }
            let doomed: Vec<String> =
                newest_first.into_iter().skip(keep).filter(|v| !kept.contains(v)).map(str::to_string).collect();
            (host.clone(), doomed)
        })
        .filter(|(_, doomed)| !doomed.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::InstanceState;

    fn instance(id: &str, region: &str, version: &str, alive: bool, created_at: u64) -> InstanceState {
        InstanceState {
            record: InstanceRecord {
                id: id.into(),
                region: region.into(),
                host: "h1".into(),
                group: "app".into(),
                version: version.into(),
                port: 1000,
                ports: BTreeMap::new(),
                created_at,
                started_at: created_at,
                pid: u32::from(alive),
                starttime: 0,
                boot: String::new(),
                config: crate::host::Identity::default(),
            },
            alive,
            runtime: crate::host::Runtime::default(),
            routed: true,
        }
    }

    fn spec(name: &str, primary: bool, count: u32) -> RegionSpec {
        RegionSpec {
            name: name.into(),
            primary,
            counts: vec![("app".into(), count)],
            hosts: vec![format!("{name}-h1"), format!("{name}-h2")],
        }
    }

    fn group(name: &str, strategy: Strategy, mounts: &[&str], beside: bool) -> GroupInputs {
        GroupInputs {
            name: name.into(),
            strategy,
            mounts: mounts.iter().map(|m| (*m).to_string()).collect(),
            identity: Identity::default(),
            beside,
        }
    }

    /// A rollout of `v2` that replaces what it finds.
    fn inputs<'a>(
        regions: &'a [RegionSpec],
        observed: &'a BTreeMap<String, HostState>,
        healthy: &'a BTreeSet<String>,
        groups: &'a [GroupInputs],
        max_unavailable: MaxUnavailable,
    ) -> Inputs<'a> {
        Inputs {
            regions,
            observed,
            healthy,
            version: "v2",
            max_unavailable,
            replace: true,
            groups,
            fleet_current: None,
        }
    }

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("new{n}")
        }
    }

    fn plan_with(
        observed: &BTreeMap<String, HostState>,
        healthy: &[&str],
        strategy: Strategy,
        max: MaxUnavailable,
        count: u32,
    ) -> Instances {
        let regions = vec![spec("syd", true, count)];
        let healthy: BTreeSet<String> = healthy.iter().map(|s| (*s).to_string()).collect();
        let groups = [group("app", strategy, &[], false)];
        let inputs = inputs(&regions, observed, &healthy, &groups, max);
        instances(&inputs, &mut ids())
    }

    fn two_on_v1() -> BTreeMap<String, HostState> {
        BTreeMap::from([
            (
                "syd-h1".to_string(),
                HostState { instances: vec![instance("a", "syd", "v1", true, 1)], ..HostState::default() },
            ),
            (
                "syd-h2".to_string(),
                HostState { instances: vec![instance("b", "syd", "v1", true, 2)], ..HostState::default() },
            ),
        ])
    }

    #[test]
    fn first_deploy_creates_instances_spread_over_hosts() {
        let plan = plan_with(&BTreeMap::new(), &[], Strategy::Rolling, MaxUnavailable::Count(1), 3);
        let hosts: Vec<&str> = plan.steps().map(|s| s.host.as_str()).collect();
        assert_eq!(hosts, ["syd-h1", "syd-h2", "syd-h1"]);
        assert_eq!(plan.regions[0].batches.len(), 1);
    }

    #[test]
    fn a_revert_goes_back_to_what_the_host_last_completed_not_to_the_instance_record() {
        // A killed run of this deploy left `a` on v2; its host still says v1.
        let mut observed = two_on_v1();
        let h1 = observed.get_mut("syd-h1").unwrap();
        h1.instances[0].record.version = "v2".into();
        h1.current = Some("v1".into());
        h1.releases = vec![release("v1", 1), release("v2", 2)];
        // Nothing ever completed on h2: a revert there removes the instance.
        let plan = plan_with(&observed, &[], Strategy::Rolling, MaxUnavailable::Count(1), 2);
        let back: BTreeMap<&str, Option<&str>> =
            plan.steps().map(|s| (s.host.as_str(), s.revert_to.as_deref())).collect();
        assert_eq!(back, BTreeMap::from([("syd-h1", Some("v1")), ("syd-h2", None)]));
    }

    #[test]
    fn rolling_replaces_one_at_a_time() {
        let plan = plan_with(&two_on_v1(), &[], Strategy::Rolling, MaxUnavailable::Count(1), 2);
        let batches: Vec<usize> = plan.regions[0].batches.iter().map(Vec::len).collect();
        assert_eq!(batches, [1, 1]);
        assert!(plan.steps().all(|s| s.action == Action::Replace));
    }

    #[test]
    fn immediate_replaces_all_at_once() {
        let plan = plan_with(&two_on_v1(), &[], Strategy::Immediate, MaxUnavailable::Count(1), 2);
        assert_eq!(plan.regions[0].batches.len(), 1);
    }

    #[test]
    fn canary_goes_first_alone() {
        let mut observed = two_on_v1();
        observed.get_mut("syd-h1").unwrap().instances.push(instance("c", "syd", "v1", true, 3));
        let plan = plan_with(&observed, &[], Strategy::Canary, MaxUnavailable::Count(2), 3);
        let batches: Vec<usize> = plan.regions[0].batches.iter().map(Vec::len).collect();
        assert_eq!(batches, [1, 2]);
    }

    #[test]
    fn fraction_sets_batch_size() {
        let plan = plan_with(&two_on_v1(), &[], Strategy::Rolling, MaxUnavailable::Fraction(0.5), 2);
        assert_eq!(plan.regions[0].batches.len(), 2);
    }

    #[test]
    fn healthy_instances_on_target_are_kept() {
        let mut observed = two_on_v1();
        observed.get_mut("syd-h1").unwrap().instances[0].record.version = "v2".into();
        let plan = plan_with(&observed, &["a"], Strategy::Rolling, MaxUnavailable::Count(1), 2);
        assert_eq!(plan.regions[0].unchanged.len(), 1);
        assert_eq!(plan.steps().filter(|s| s.action == Action::Replace).count(), 1);
    }

    #[test]
    fn converged_plan_is_noop() {
        let mut observed = two_on_v1();
        for state in observed.values_mut() {
            state.instances[0].record.version = "v2".into();
        }
        let plan = plan_with(&observed, &["a", "b"], Strategy::Rolling, MaxUnavailable::Count(1), 2);
        assert!(plan.is_noop());
    }

    #[test]
    fn instances_need_a_volume_once_mounts_are_added() {
        let regions = vec![spec("syd", true, 2)];
        let observed = two_on_v1();
        let healthy = BTreeSet::new();
        let groups = [group("app", Strategy::Rolling, &["data"], false)];
        let inputs = inputs(&regions, &observed, &healthy, &groups, MaxUnavailable::Count(1));
        let plan = instances(&inputs, &mut ids());
        assert_eq!(plan.missing_volumes.len(), 2, "neither existing instance holds a volume");
    }

    #[test]
    fn each_process_group_is_planned_at_its_own_count_after_the_one_before() {
        let mut observed = two_on_v1();
        observed.get_mut("syd-h2").unwrap().instances[0].record.group = "worker".into();
        let regions =
            vec![RegionSpec { counts: vec![("app".into(), 2), ("worker".into(), 1)], ..spec("syd", true, 0) }];
        let groups = [group("app", Strategy::Bluegreen, &[], true), group("worker", Strategy::Rolling, &[], false)];
        let healthy = BTreeSet::new();
        let inputs = inputs(&regions, &observed, &healthy, &groups, MaxUnavailable::Count(1));
        let plan = instances(&inputs, &mut ids());
        let region = &plan.regions[0];
        let shape: Vec<Vec<(&str, Action, &str, bool)>> = region
            .batches
            .iter()
            .map(|b| b.iter().map(|s| (s.group.as_str(), s.action, s.host.as_str(), s.beside)).collect())
            .collect();
        assert_eq!(
            shape,
            vec![
                vec![("app", Action::Create, "syd-h2", false)],
                vec![("app", Action::Replace, "syd-h1", true)],
                vec![("worker", Action::Replace, "syd-h2", false)],
            ]
        );
        assert!(region.together, "the web group switches at once");
        assert_eq!(region.batches[2][0].id, "b", "the worker is replaced in place and keeps its id");
    }

    #[test]
    fn dead_instance_on_target_is_replaced_first() {
        let mut observed = two_on_v1();
        let dead = &mut observed.get_mut("syd-h2").unwrap().instances[0];
        dead.record.version = "v2".into();
        dead.alive = false;
        let plan = plan_with(&observed, &[], Strategy::Rolling, MaxUnavailable::Count(1), 2);
        assert_eq!(plan.regions[0].batches[0][0].id, "b");
    }

    fn release(version: &str, at: u64) -> crate::host::InstalledRelease {
        crate::host::InstalledRelease { version: version.into(), sha256: format!("sha-{version}"), installed_at: at }
    }

    #[test]
    fn pruning_keeps_the_newest_the_previous_and_what_still_runs() {
        let mut state = HostState {
            releases: (1..=6).map(|n| release(&format!("v{n}"), n)).collect(),
            instances: vec![instance("a", "syd", "v2", true, 1), instance("b", "syd", "v5", true, 2)],
            ..HostState::default()
        };
        state.instances[0].record.host = "h".into();
        let observed = BTreeMap::from([("h".to_string(), state)]);
        // Instance b moves to v6; a stays on v2 (another region's rollout, say).
        let moved = BTreeSet::from(["b"]);
        let doomed = prune(2, &observed, &moved, "v6", Some("v1"));
        assert_eq!(doomed["h"], ["v4", "v3"], "v6 and v5 are the newest two; v2 still runs; v1 is the rollback target");
    }

    #[test]
    fn the_first_batch_ships_first_then_the_primary_then_the_rest() {
        let observed = two_on_v1();
        let mut plan = plan_with(&observed, &[], Strategy::Rolling, MaxUnavailable::Count(1), 2);
        plan.regions.push(RegionPlan {
            region: "lax".into(),
            primary: false,
            batches: vec![],
            unchanged: vec![],
            together: false,
            canary: None,
        });
        let first_host = plan.regions[0].batches[0][0].host.clone();
        let hosts = [
            ("syd".to_string(), "syd-h1".to_string()),
            ("syd".to_string(), "syd-h2".to_string()),
            ("lax".to_string(), "lax-h1".to_string()),
        ];
        let waves = ship(&hosts, &plan, |h| h == "lax-h1", true);
        let wave_of = |h: &str| waves.iter().find(|s| s.host == h).unwrap().wave;
        assert_eq!(wave_of(&first_host), Wave::First);
        let other = if first_host == "syd-h1" { "syd-h2" } else { "syd-h1" };
        assert_eq!(wave_of(other), Wave::Primary);
        assert_eq!(wave_of("lax-h1"), Wave::Others);
        assert!(waves.iter().find(|s| s.host == "lax-h1").unwrap().present);
        let all_first = ship(&hosts, &plan, |_| false, false);
        assert!(all_first.iter().all(|s| s.wave == Wave::First), "a migration needs every host first");
    }
}
