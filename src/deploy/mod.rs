//! Executing a rollout [`Plan`]: the primary region first, then the others in
//! parallel; within a region batch by batch. Each instance is stopped, started on the
//! target version and must pass its checks before the next batch. The first failure
//! halts every region, gives the failing instance its previous version back, and then
//! (unless `--no-revert`) reverts every instance this rollout already changed.
//! Emits events; never prints.

mod ports;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;

use crate::config::Config;
use crate::health::{Checks, Failure};
use crate::host::{now_ms, Host, InstanceRecord};
use crate::plan::{Plan, RegionPlan, Step};
use crate::report::{Event, Outcome, Reporter};

pub use ports::PortPicker;

/// How many log lines of a failed instance the report shows.
pub const LOG_LINES: usize = 20;

/// Everything the rollout tasks share.
pub struct Rollout {
    pub hosts: BTreeMap<String, Host>,
    pub config: Arc<Config>,
    pub checks: Checks,
    pub reporter: Arc<dyn Reporter>,
    pub start: String,
    pub wait_timeout: Duration,
    pub no_revert: bool,
    pub ports: Mutex<PortPicker>,
    /// Extra environment for every instance (secrets), never printed.
    pub extra_env: BTreeMap<String, String>,
    /// Regions whose read replica must replay the migration before they change.
    pub replica_waits: BTreeMap<String, ReplicaWait>,
    /// Hosts still receiving the release: a region starts once all of its have it.
    pub shipped: BTreeMap<String, Shipped>,
    /// `address:port` of a healthy primary-region instance, given to the others as
    /// `FERRY_PRIMARY_ADDR` (how a database replica finds its primary).
    pub primary_addr: Mutex<Option<String>>,
    halt: AtomicBool,
}

/// What a region waits for before its first instance changes.
#[derive(Default)]
pub struct Gates {
    /// By region: its read replica replaying the migration.
    pub replicas: BTreeMap<String, ReplicaWait>,
    /// By host: the release arriving there (`None` until the host's shipping ends).
    pub shipped: BTreeMap<String, Shipped>,
}

/// How a host's shipping ended, once it has: `Err` says why it failed.
pub type Shipped = tokio::sync::watch::Receiver<Option<Result<(), String>>>;

/// How often a region waiting for its hosts' release looks whether the rollout halted.
const SHIPPED_POLL: Duration = Duration::from_millis(20);

/// Wait for a region's replica to replay the primary's WAL up to `target`.
#[derive(Debug, Clone)]
pub struct ReplicaWait {
    pub url: String,
    /// `host:port/db`, for reports.
    pub replica: String,
    /// A local forward to the replica, when only the region's hosts reach it.
    pub via: Option<std::net::SocketAddr>,
    pub target: crate::postgres::Lsn,
    pub timeout: Duration,
}

/// A region left on its old version because its replica did not catch up.
#[derive(Debug, Clone)]
pub struct ReplicaBehind {
    pub region: String,
    pub replica: String,
    pub lag_bytes: Option<u64>,
    pub error: Option<String>,
}

/// How often a waiting region asks its replica where replay is.
pub const REPLICA_POLL: Duration = Duration::from_millis(50);

/// A failed instance, as reported.
#[derive(Debug, Clone)]
pub struct StepFailure {
    pub region: String,
    pub host: String,
    pub instance: String,
    pub version: String,
    pub reason: String,
    /// What to do next, when it is not to read the instance's log.
    pub hint: Option<String>,
}

#[derive(Debug, Default)]
pub struct Summary {
    /// Instances now healthy on the target version (changed by this rollout).
    pub changed: Vec<(Step, u16)>,
    pub failure: Option<StepFailure>,
    /// Instances that could not be put back, and why.
    pub unrecovered: Vec<String>,
    pub reverted: usize,
    /// Regions not updated because their replica was behind.
    pub behind: Vec<ReplicaBehind>,
}

impl Summary {
    pub fn outcome(&self) -> Outcome {
        match (&self.failure, self.unrecovered.is_empty()) {
            (None, _) if self.behind.is_empty() => Outcome::Succeeded,
            (Some(_), true) if self.changed.is_empty() => Outcome::Reverted,
            _ => Outcome::Failed,
        }
    }
}

impl Rollout {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        hosts: BTreeMap<String, Host>,
        config: Arc<Config>,
        checks: Checks,
        reporter: Arc<dyn Reporter>,
        start: String,
        wait_timeout: Duration,
        no_revert: bool,
        ports: PortPicker,
    ) -> Self {
        Self {
            hosts,
            config,
            checks,
            reporter,
            start,
            wait_timeout,
            no_revert,
            ports: Mutex::new(ports),
            extra_env: BTreeMap::new(),
            replica_waits: BTreeMap::new(),
            shipped: BTreeMap::new(),
            primary_addr: Mutex::new(None),
            halt: AtomicBool::new(false),
        }
    }

    /// Runs the plan to the end, or to the first failure and its revert.
    pub async fn execute(self: &Arc<Self>, plan: Plan) -> Summary {
        if self.config.ferry.primary_last {
            return self.execute_primary_last(plan).await;
        }
        let mut summary = Summary::default();
        let mut regions = plan.regions.into_iter();
        let mut rest: Vec<RegionPlan> = Vec::new();
        if let Some(first) = regions.next() {
            if first.primary {
                Arc::clone(self).run_region(first).await.merge_into(&mut summary);
            } else {
                rest.push(first);
            }
        }
        rest.extend(regions);
        let mut tasks = JoinSet::new();
        for region in rest {
            tasks.spawn(Arc::clone(self).run_region(region));
        }
        while let Some(result) = tasks.join_next().await {
            if let Ok(region) = result {
                region.merge_into(&mut summary);
            }
        }
        if summary.failure.is_some() && !self.no_revert {
            self.revert_all(&mut summary).await;
        }
        summary
    }

    /// One region after another, the primary last, so that a database's primary never
    /// restarts before its replicas are back and healthy.
    async fn execute_primary_last(self: &Arc<Self>, plan: Plan) -> Summary {
        let mut summary = Summary::default();
        let (primary, others): (Vec<RegionPlan>, Vec<RegionPlan>) = plan.regions.into_iter().partition(|r| r.primary);
        for region in others.into_iter().chain(primary) {
            if self.halt.load(Ordering::SeqCst) {
                break;
            }
            Arc::clone(self).run_region(region).await.merge_into(&mut summary);
        }
        if summary.failure.is_some() && !self.no_revert {
            self.revert_all(&mut summary).await;
        }
        summary
    }

    async fn run_region(self: Arc<Self>, plan: RegionPlan) -> Summary {
        let mut summary = Summary::default();
        let region = plan.region.clone();
        let total = plan.batches.iter().map(Vec::len).sum();
        self.reporter.event(&Event::RegionStarted { region: region.clone(), instances: total });
        for step in &plan.unchanged {
            self.reporter.event(&Event::InstanceUnchanged {
                region: step.region.clone(),
                host: step.host.clone(),
                instance: step.id.clone(),
                version: step.to.clone(),
            });
        }
        let mut outcome = "succeeded";
        let region_hosts: Vec<String> =
            self.hosts.values().filter(|h| h.region == region).map(|h| h.name.clone()).collect();
        // A region other than the primary changes nothing until all its hosts hold the
        // release; the primary starts as soon as its first batch's hosts do.
        let first = if plan.primary { Vec::new() } else { region_hosts.clone() };
        if let Err(failed) = self.wait_shipped(&first).await {
            let outcome = self.shipping_outcome(&mut summary, &region, failed);
            self.reporter.event(&Event::RegionFinished { region, outcome: outcome.into() });
            return summary;
        }
        if let (Some(wait), false) = (self.replica_waits.get(&region), plan.batches.is_empty()) {
            if let Err(behind) = self.wait_for_replica(&region, wait).await {
                summary.behind.push(behind);
                self.reporter.event(&Event::RegionFinished { region, outcome: "replica_behind".into() });
                return summary;
            }
        }
        for batch in plan.batches {
            if crate::host::lock::lost() && !self.halt.swap(true, Ordering::SeqCst) {
                summary.failure = Some(StepFailure {
                    region: region.clone(),
                    host: String::new(),
                    instance: "-".into(),
                    version: String::new(),
                    reason: "the deploy lock was taken over by another operation (this one looked stale); stopped before changing more instances".into(),
                    hint: Some("`ferry lock status` shows who holds it now; `ferry status` shows where things stand".into()),
                });
            }
            if let Some((failed, reason)) = self.shipping_failed() {
                // Another region's host could not get the release: change nothing more.
                self.halt_for_shipping(&mut summary, &failed, reason);
            }
            if self.halt.load(Ordering::SeqCst) {
                outcome = "halted";
                break;
            }
            let hosts: Vec<String> = batch.iter().map(|step| step.host.clone()).collect();
            if let Err(failed) = self.wait_shipped(&hosts).await {
                outcome = self.shipping_outcome(&mut summary, &region, failed);
                break;
            }
            let mut tasks = JoinSet::new();
            for step in batch {
                let port = match step.previous.as_ref() {
                    Some(previous) => previous.port,
                    None => self.pick_port(&step.host),
                };
                tasks.spawn(Arc::clone(&self).apply(step, port));
            }
            while let Some(result) = tasks.join_next().await {
                match result {
                    Ok(Ok(done)) => summary.changed.push(done),
                    Ok(Err((failure, unrecovered))) => {
                        self.halt.store(true, Ordering::SeqCst);
                        outcome = "failed";
                        summary.unrecovered.extend(unrecovered);
                        summary.failure.get_or_insert(failure);
                    }
                    Err(join) => {
                        self.halt.store(true, Ordering::SeqCst);
                        outcome = "failed";
                        summary.failure.get_or_insert(StepFailure {
                            region: region.clone(),
                            host: String::new(),
                            instance: String::new(),
                            version: String::new(),
                            reason: format!("internal error: {join}"),
                            hint: None,
                        });
                    }
                }
            }
        }
        if outcome == "succeeded" {
            // Hosts of the region that no batch needed must hold the release too.
            if let Err(failed) = self.wait_shipped(&region_hosts).await {
                outcome = self.shipping_outcome(&mut summary, &region, failed);
            }
        }
        self.reporter.event(&Event::RegionFinished { region, outcome: outcome.into() });
        summary
    }

    /// The region's outcome when waiting for its hosts' release did not end well:
    /// `failed` (a host could not get it: the rollout halts) or `halted` (another
    /// region failed meanwhile).
    fn shipping_outcome(&self, summary: &mut Summary, region: &str, failed: Option<String>) -> &'static str {
        match failed {
            Some(reason) => {
                self.halt_for_shipping(summary, region, reason);
                "failed"
            }
            None => "halted",
        }
    }

    /// A host whose shipping failed, if any: its region and why.
    fn shipping_failed(&self) -> Option<(String, String)> {
        self.shipped.iter().find_map(|(host, receiver)| match &*receiver.borrow() {
            Some(Err(reason)) => {
                Some((self.hosts.get(host).map(|h| h.region.clone()).unwrap_or_default(), reason.clone()))
            }
            _ => None,
        })
    }

    /// Halts the rollout because `region`'s hosts could not get the release.
    fn halt_for_shipping(&self, summary: &mut Summary, region: &str, reason: String) {
        if self.halt.swap(true, Ordering::SeqCst) {
            return;
        }
        summary.failure.get_or_insert(StepFailure {
            region: region.to_string(),
            host: String::new(),
            instance: "-".into(),
            version: String::new(),
            hint: Some(if reason.contains("different contents") {
                "a version names one release forever: build the changed tree as a new version (`--version ...`)".into()
            } else {
                "fix the host (disk space: `df -h`, permissions) and run the deploy again: it ships only what is missing"
                    .into()
            }),
            reason,
        });
    }

    /// Waits until each of `hosts` still receiving the release has it: `Err` with why
    /// one failed, or `Err(None)` when the rollout halted meanwhile.
    async fn wait_shipped(&self, hosts: &[String]) -> Result<(), Option<String>> {
        for receiver in hosts.iter().filter_map(|h| self.shipped.get(h)) {
            let mut receiver = receiver.clone();
            loop {
                if let Some(ended) = receiver.borrow_and_update().clone() {
                    ended.map_err(Some)?;
                    break;
                }
                if self.halt.load(Ordering::SeqCst) {
                    return Err(None);
                }
                tokio::select! {
                    changed = receiver.changed() => {
                        if changed.is_err() && receiver.borrow().is_none() {
                            return Err(Some("shipping the release stopped before it ended".into()));
                        }
                    }
                    () = tokio::time::sleep(SHIPPED_POLL) => {}
                }
            }
        }
        Ok(())
    }

    /// Polls the replica until it has replayed `wait.target`, reporting the lag as it
    /// shrinks; gives up at `wait.timeout` (or when another region failed).
    async fn wait_for_replica(&self, region: &str, wait: &ReplicaWait) -> Result<(), ReplicaBehind> {
        let deadline = tokio::time::Instant::now() + wait.timeout;
        let mut last_lag = None;
        let mut last_error: Option<String>;
        loop {
            match crate::postgres::query_text(&wait.url, wait.via, "SELECT pg_last_wal_replay_lsn()::text").await {
                Ok(Some(text)) => match text.parse::<crate::postgres::Lsn>() {
                    Ok(replayed) if replayed >= wait.target => {
                        self.reporter.event(&Event::ReplicaCaughtUp {
                            region: region.to_string(),
                            replica: wait.replica.clone(),
                        });
                        return Ok(());
                    }
                    Ok(replayed) => {
                        let lag = wait.target.0 - replayed.0;
                        if last_lag != Some(lag) {
                            self.reporter.event(&Event::ReplicaWaiting {
                                region: region.to_string(),
                                replica: wait.replica.clone(),
                                lag_bytes: lag,
                            });
                        }
                        last_lag = Some(lag);
                        last_error = None;
                    }
                    Err(e) => last_error = Some(e),
                },
                Ok(None) => last_error = Some("it is not a replica (pg_last_wal_replay_lsn() is NULL)".into()),
                Err(e) => last_error = Some(e),
            }
            if tokio::time::Instant::now() >= deadline || self.halt.load(Ordering::SeqCst) {
                return Err(ReplicaBehind {
                    region: region.to_string(),
                    replica: wait.replica.clone(),
                    lag_bytes: last_lag,
                    error: last_error,
                });
            }
            tokio::time::sleep(REPLICA_POLL).await;
        }
    }

    fn pick_port(&self, host: &str) -> u16 {
        let local = self.hosts.get(host).is_none_or(|h| h.transport.is_local());
        self.ports.lock().map_or(0, |mut p| p.pick(host, local))
    }

    /// Moves one instance to the target version. On failure the instance gets its
    /// previous version back before this returns.
    async fn apply(self: Arc<Self>, step: Step, port: u16) -> Result<(Step, u16), (StepFailure, Vec<String>)> {
        let Some(host) = self.hosts.get(&step.host).cloned() else {
            let failure = Self::failure(&step, format!("unknown host `{}`", step.host));
            return Err((failure, Vec::new()));
        };
        self.reporter.event(&Event::InstanceUpdating {
            region: step.region.clone(),
            host: step.host.clone(),
            instance: step.id.clone(),
            from: step.previous.as_ref().map(|p| p.version.clone()),
            to: step.to.clone(),
        });
        let created_at = step.previous.as_ref().map_or_else(now_ms, |p| p.created_at);
        let record = Self::record(&step, &step.to, port, created_at);
        let result = self.start_and_wait(&host, &record, step.was_alive).await;
        match result {
            Ok(elapsed) => {
                if step.region == self.config.primary() {
                    if let Ok(mut addr) = self.primary_addr.lock() {
                        addr.get_or_insert_with(|| format!("{}:{port}", host.address()));
                    }
                }
                self.reporter.event(&Event::InstanceHealthy {
                    region: step.region.clone(),
                    host: step.host.clone(),
                    instance: step.id.clone(),
                    version: step.to.clone(),
                    port,
                    elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                });
                Ok((step, port))
            }
            Err(reason) => {
                let log = host.log_tail(&step.id, LOG_LINES).await.unwrap_or_default();
                self.halt.store(true, Ordering::SeqCst);
                self.reporter.event(&Event::InstanceFailed {
                    region: step.region.clone(),
                    host: step.host.clone(),
                    instance: step.id.clone(),
                    version: step.to.clone(),
                    reason: reason.clone(),
                    log,
                });
                let failure = Self::failure(&step, reason);
                let unrecovered = match self.revert_one(&host, &step, port).await {
                    Ok(()) => Vec::new(),
                    Err(problem) => vec![problem],
                };
                Err((failure, unrecovered))
            }
        }
    }

    fn failure(step: &Step, reason: String) -> StepFailure {
        StepFailure {
            region: step.region.clone(),
            host: step.host.clone(),
            instance: step.id.clone(),
            version: step.to.clone(),
            reason,
            hint: None,
        }
    }

    fn record(step: &Step, version: &str, port: u16, created_at: u64) -> InstanceRecord {
        InstanceRecord {
            id: step.id.clone(),
            region: step.region.clone(),
            host: step.host.clone(),
            version: version.to_string(),
            port,
            created_at,
            started_at: now_ms(),
            pid: 0,
        }
    }

    /// Starts `record` (stopping the instance's old process first when `replace`)
    /// and waits until it is healthy; returns how long that took.
    async fn start_and_wait(&self, host: &Host, record: &InstanceRecord, replace: bool) -> Result<Duration, String> {
        let mut env = self.instance_env(record);
        let mounts = app_mounts(&self.config);
        let (signal, timeout) = (&self.config.kill_signal, self.config.kill_timeout);
        let pid = if replace && mounts.is_empty() {
            // Stop and start in one round trip.
            host.switch_instance(signal, timeout, record, &self.start, &env)
                .await
                .map_err(|e| format!("replacing the old version with {}: {e}", record.version))?
        } else {
            if replace {
                host.stop_instance(&record.id, signal, timeout)
                    .await
                    .map_err(|e| format!("stopping the old version: {e}"))?;
            }
            // The old process held the volumes: attach them once it is gone.
            for mount in mounts {
                let path = host
                    .volume_attach(&record.id, &mount.source, &mount.destination)
                    .await
                    .map_err(|e| format!("attaching volume `{}`: {e}", mount.source))?;
                env.insert(volume_env(&mount.source), path);
            }
            host.start_instance(record, &self.start, &env)
                .await
                .map_err(|e| format!("starting {}: {e}", record.version))?
        };
        let addr =
            host.transport.forward(record.port).await.map_err(|e| format!("reaching port {}: {e}", record.port))?;
        let exited =
            async { host.wait_exit(pid, self.wait_timeout + Duration::from_secs(5)).await.map_err(|e| e.to_string()) };
        self.checks.wait_healthy(addr, !host.transport.is_local(), self.wait_timeout, exited).await.map_err(|failure| {
            match failure {
                Failure::Exited => format!("the process exited before it became healthy (version {})", record.version),
                other => other.to_string(),
            }
        })
    }

    /// The environment of one instance: `[env]`, secrets, then ferry's own variables
    /// (which win, so `PORT` is always the port ferry chose).
    pub fn instance_env(&self, record: &InstanceRecord) -> BTreeMap<String, String> {
        let mut env = self.config.env.clone();
        env.extend(self.extra_env.clone());
        let primary = self.config.primary();
        if let Some(addr) = self.primary_addr.lock().ok().and_then(|a| a.clone()) {
            env.insert("FERRY_PRIMARY_ADDR".into(), addr);
        }
        for (key, value) in [
            ("PORT", record.port.to_string()),
            ("FLY_APP_NAME", self.config.app.clone()),
            ("FLY_REGION", record.region.clone()),
            ("PRIMARY_REGION", primary),
            ("FERRY_INSTANCE_ID", record.id.clone()),
            ("FLY_MACHINE_ID", record.id.clone()),
            ("FLY_PROCESS_GROUP", "app".to_string()),
            ("RELEASE_VERSION", record.version.clone()),
        ] {
            env.insert(key.to_string(), value);
        }
        env
    }

    /// Puts one instance back as it was before this rollout touched it.
    async fn revert_one(&self, host: &Host, step: &Step, port: u16) -> Result<(), String> {
        let stopped = host.stop_instance(&step.id, &self.config.kill_signal, self.config.kill_timeout).await;
        let result = match (&step.previous, stopped) {
            (_, Err(e)) => Err(format!("could not stop it: {e}")),
            (None, Ok(_)) => host.remove_instance(&step.id).await.map(|()| Duration::ZERO).map_err(|e| e.to_string()),
            (Some(previous), Ok(_)) => {
                let record = Self::record(step, &previous.version, port, previous.created_at);
                self.start_and_wait(host, &record, false).await
            }
        };
        match result {
            Ok(_) => {
                self.reporter.event(&Event::InstanceReverted {
                    region: step.region.clone(),
                    host: step.host.clone(),
                    instance: step.id.clone(),
                    version: step.previous.as_ref().map(|p| p.version.clone()),
                });
                Ok(())
            }
            Err(reason) => {
                self.reporter.event(&Event::InstanceRevertFailed {
                    region: step.region.clone(),
                    host: step.host.clone(),
                    instance: step.id.clone(),
                    reason: reason.clone(),
                });
                Err(format!("{} on `{}`: {reason}", step.id, step.host))
            }
        }
    }

    /// Reverts every instance this rollout changed: regions in parallel, one instance
    /// at a time within a region so each keeps serving.
    async fn revert_all(self: &Arc<Self>, summary: &mut Summary) {
        let mut by_region: BTreeMap<String, Vec<(Step, u16)>> = BTreeMap::new();
        for (step, port) in std::mem::take(&mut summary.changed) {
            by_region.entry(step.region.clone()).or_default().push((step, port));
        }
        let mut tasks = JoinSet::new();
        for (_, steps) in by_region {
            let this = Arc::clone(self);
            tasks.spawn(async move {
                let mut problems = Vec::new();
                let mut reverted = 0;
                for (step, port) in steps.into_iter().rev() {
                    let Some(host) = this.hosts.get(&step.host).cloned() else { continue };
                    match this.revert_one(&host, &step, port).await {
                        Ok(()) => reverted += 1,
                        Err(problem) => problems.push(problem),
                    }
                }
                (reverted, problems)
            });
        }
        while let Some(result) = tasks.join_next().await {
            if let Ok((reverted, problems)) = result {
                summary.reverted += reverted;
                summary.unrecovered.extend(problems);
            }
        }
    }
}

impl Summary {
    fn merge_into(self, total: &mut Summary) {
        total.changed.extend(self.changed);
        total.unrecovered.extend(self.unrecovered);
        total.reverted += self.reverted;
        total.behind.extend(self.behind);
        if total.failure.is_none() {
            total.failure = self.failure;
        }
    }
}

/// A picker that avoids every port recorded for an instance or listening on a host.
pub fn port_picker(observed: &BTreeMap<String, crate::host::HostState>) -> PortPicker {
    let mut taken: BTreeSet<(String, u16)> = BTreeSet::new();
    for (host, state) in observed {
        taken.extend(state.instances.iter().map(|i| (i.record.host.clone(), i.record.port)));
        taken.extend(state.listening.iter().map(|p| (host.clone(), *p)));
    }
    PortPicker::new(taken)
}

/// The `[mounts]` of the `app` process group (the one ferry runs).
pub fn app_mounts(config: &Config) -> Vec<&crate::config::Mount> {
    config.mounts.iter().filter(|m| m.processes.is_empty() || m.processes.iter().any(|p| p == "app")).collect()
}

/// `FERRY_VOLUME_<NAME>`: where an instance finds the volume named NAME.
pub fn volume_env(name: &str) -> String {
    let upper: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("FERRY_VOLUME_{upper}")
}
