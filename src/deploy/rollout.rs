//! Executing a plan's instances: the primary region first, then the others in
//! parallel (or one region after another with the primary last); within a region
//! batch by batch. Each instance is moved to the target version and must pass its
//! checks before the next batch. A region waits for its hosts to hold the release and
//! for its replica to replay the migration before its first change. The first
//! failure halts every region, gives the failing instance its previous version back,
//! and then (unless `--no-revert`) reverts every instance this rollout changed.
//! Emits events; never prints.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;

use crate::host::lock::Lease;
use crate::host::{now_ms, Host};
use crate::postgres::Lsn;
use crate::report::{Event, Reporter};
use crate::settings::Order;

use super::instance::{self, Spec};
use super::outcome::{Cause, ReplicaBehind, StepFailure, Summary};
use super::plan::{RegionPlan, Step};
use super::ports::PortPicker;

/// How many log lines of a failed instance the report shows.
pub const LOG_LINES: usize = 20;

/// How often a waiting region asks its replica where replay is.
pub const REPLICA_POLL: Duration = Duration::from_millis(50);

/// How often a canary's answers are counted.
const CANARY_POLL: Duration = Duration::from_millis(500);

/// How long after its `canary_time` the agent lets a canary go by itself.
const CANARY_GRACE: Duration = Duration::from_secs(30);

/// Answers a canary must have given before its error rate is judged.
pub const CANARY_MIN_ANSWERS: u64 = 20;

/// How often a region waiting for its hosts' release looks whether the rollout halted.
const SHIPPED_POLL: Duration = Duration::from_millis(20);
/// A health wait shorter than this says nothing more than `starting`: most instances
/// are healthy by then, and a report costs a round trip to the host.
const WAIT_QUIET: Duration = Duration::from_secs(3);
/// How often a longer wait says how it goes.
const WAIT_REPORT_EVERY: Duration = Duration::from_secs(3);

/// How a host's shipping ended, once it has: `Err` says why it failed.
pub type Shipped = tokio::sync::watch::Receiver<Option<Result<(), String>>>;

/// Asks a replica how far it has replayed (`None`: it is not a replica).
pub type ReplayProbe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Option<Lsn>, String>> + Send>> + Send + Sync>;

/// Wait for a region's replica to replay the primary's WAL up to `target`.
#[derive(Clone)]
pub struct ReplicaWait {
    /// `host:port/db`, for reports.
    pub replica: String,
    pub probe: ReplayProbe,
    pub target: Lsn,
    pub timeout: Duration,
}

/// What a region waits for before its first instance changes, and what stops the
/// rollout between batches.
#[derive(Default)]
pub struct Gates {
    /// By region: its read replica replaying the migration.
    pub replicas: BTreeMap<String, ReplicaWait>,
    /// By host: the release arriving there (absent: it already has it).
    pub shipped: BTreeMap<String, Shipped>,
    /// The operation's lock: once lost, nothing more changes.
    pub lease: Lease,
}

/// Everything the rollout tasks share.
pub struct Rollout {
    hosts: BTreeMap<String, Host>,
    /// By process group: what its instances run with.
    specs: BTreeMap<String, Spec>,
    primary: String,
    version: String,
    reporter: Arc<dyn Reporter>,
    no_revert: bool,
    order: Order,
    gates: Gates,
    ports: Mutex<PortPicker>,
    /// `address:port` of a healthy primary-region instance, given to the others as
    /// `FERRY_PRIMARY_ADDR` (how a database replica finds its primary).
    primary_addr: Mutex<Option<String>>,
    halt: AtomicBool,
    /// How long a changed instance must stay up after passing its checks.
    min_healthy: Duration,
    /// One task per changed instance, watching it through `min_healthy`: a failure
    /// halts the rollout (the next batch does not wait for them).
    settling: Mutex<Vec<tokio::task::JoinHandle<Option<StepFailure>>>>,
    /// How a canary is watched under traffic; `None`: it replaces its old instance as
    /// soon as it is ready.
    canary: Option<crate::config::CanaryConfig>,
}

/// Ends a task when dropped, however its owner ends (a cancelled rollout task too).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An instance of the target version, started and ready to take traffic.
struct Ready {
    host: Host,
    step: Step,
    port: u16,
}

/// How a watched canary ended: its step's result, or removed because the rollout
/// halted elsewhere (with what could not be put back).
enum Watched {
    Done(Box<StepResult>),
    Halted(Vec<String>),
}

/// A step done (with its port), or its failure and what could not be put back.
type StepResult = Result<(Step, u16), (StepFailure, Vec<String>)>;

fn step_failure(step: &Step, cause: Cause) -> StepFailure {
    StepFailure {
        region: step.region.clone(),
        instance: Some((step.host.clone(), step.id.clone())),
        version: step.to.clone(),
        cause,
    }
}

/// How a rollout is set up: the hosts, what instances run with, and where things go.
pub struct Setup {
    pub hosts: BTreeMap<String, Host>,
    /// By process group (at least one).
    pub specs: BTreeMap<String, Spec>,
    pub primary: String,
    pub version: String,
    pub reporter: Arc<dyn Reporter>,
    pub no_revert: bool,
    pub order: Order,
    pub gates: Gates,
    pub ports: PortPicker,
    pub primary_addr: Option<String>,
    pub min_healthy: Duration,
    pub canary: Option<crate::config::CanaryConfig>,
}

impl Rollout {
    /// What instances of `group` run with.
    fn spec(&self, group: &str) -> &Spec {
        match self.specs.get(group) {
            Some(spec) => spec,
            // Every step's group has a spec (the plan has only configured groups).
            None => self.specs.values().next().expect("a rollout has a spec"),
        }
    }

    pub fn new(setup: Setup) -> Arc<Self> {
        Arc::new(Self {
            hosts: setup.hosts,
            specs: setup.specs,
            primary: setup.primary,
            version: setup.version,
            reporter: setup.reporter,
            no_revert: setup.no_revert,
            order: setup.order,
            gates: setup.gates,
            ports: Mutex::new(setup.ports),
            primary_addr: Mutex::new(setup.primary_addr),
            halt: AtomicBool::new(false),
            min_healthy: setup.min_healthy,
            settling: Mutex::new(Vec::new()),
            canary: setup.canary,
        })
    }

    /// Runs the regions' batches to the end, or to the first failure and its revert.
    pub async fn execute(self: &Arc<Self>, regions: Vec<RegionPlan>) -> Summary {
        let mut summary = Summary::default();
        let (primary, others): (Vec<RegionPlan>, Vec<RegionPlan>) = regions.into_iter().partition(|r| r.primary);
        match self.order {
            Order::PrimaryLast => {
                // One region after another, the primary last, so that a database's
                // primary never restarts before its replicas are back and healthy.
                for region in others.into_iter().chain(primary) {
                    if self.halted() {
                        break;
                    }
                    Arc::clone(self).run_region(region).await.merge_into(&mut summary);
                }
            }
            Order::PrimaryFirst => {
                for region in primary {
                    Arc::clone(self).run_region(region).await.merge_into(&mut summary);
                }
                let mut tasks = JoinSet::new();
                for region in others {
                    tasks.spawn(Arc::clone(self).run_region(region));
                }
                while let Some(result) = tasks.join_next().await {
                    match result {
                        Ok(region) => region.merge_into(&mut summary),
                        Err(join) => {
                            self.halt.store(true, Ordering::SeqCst);
                            summary.failure.get_or_insert(StepFailure::region(
                                "-",
                                &self.version,
                                Cause::Internal(join.to_string()),
                            ));
                        }
                    }
                }
            }
        }
        // The rollout counts only once every changed instance has stayed up long enough.
        let settling: Vec<_> = self.settling.lock().map(|mut s| std::mem::take(&mut *s)).unwrap_or_default();
        for task in settling {
            if let Ok(Some(failure)) = task.await {
                summary.failure.get_or_insert(failure);
            }
        }
        if summary.failure.is_some() && !self.no_revert {
            self.revert_all(&mut summary).await;
        }
        summary
    }

    /// Watches a changed instance through `min_healthy`; a death halts the rollout.
    fn settle(self: &Arc<Self>, host: Host, step: &Step, record: crate::host::InstanceRecord, pid: u32) {
        if self.min_healthy.is_zero() {
            return;
        }
        let (this, step) = (Arc::clone(self), step.clone());
        let task = tokio::spawn(async move {
            let cause = instance::stabilize(&host, &record, pid, this.min_healthy).await.err()?;
            this.failed(&host, &step, &cause).await;
            Some(StepFailure {
                region: step.region.clone(),
                instance: Some((step.host.clone(), step.id.clone())),
                version: step.to.clone(),
                cause,
            })
        });
        if let Ok(mut settling) = self.settling.lock() {
            settling.push(task);
        }
    }

    /// An instance of `step` failed: the rollout halts everywhere, and the report says
    /// why with the instance's last log lines.
    async fn failed(&self, host: &Host, step: &Step, cause: &impl std::fmt::Display) {
        self.halt.store(true, Ordering::SeqCst);
        let log = host.log_tail(&step.id, LOG_LINES, true).await.unwrap_or_default();
        self.reporter.event(&Event::InstanceFailed {
            region: step.region.clone(),
            group: step.group.clone(),
            host: step.host.clone(),
            instance: step.id.clone(),
            version: step.to.clone(),
            reason: cause.to_string(),
            log,
        });
    }

    fn halted(&self) -> bool {
        self.halt.load(Ordering::SeqCst)
    }

    /// Halts the rollout; true when this call did (the first failure is the one
    /// reported).
    fn halt_first(&self) -> bool {
        !self.halt.swap(true, Ordering::SeqCst)
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
        let outcome = self.run_batches(&plan, &mut summary).await;
        self.reporter.event(&Event::RegionFinished { region, outcome: outcome.into() });
        summary
    }

    /// The region's batches; returns the region's outcome.
    async fn run_batches(self: &Arc<Self>, plan: &RegionPlan, summary: &mut Summary) -> &'static str {
        let region = plan.region.as_str();
        let region_hosts: Vec<String> =
            self.hosts.values().filter(|h| h.region == region).map(|h| h.name.clone()).collect();
        // A region other than the primary changes nothing until all its hosts hold the
        // release; the primary starts as soon as its first batch's hosts do.
        let first = if plan.primary { Vec::new() } else { region_hosts.clone() };
        if let Err(failed) = self.wait_shipped(&first).await {
            return self.shipping_outcome(summary, region, failed);
        }
        if let (Some(wait), false) = (self.gates.replicas.get(region), plan.batches.is_empty()) {
            if let Err(behind) = self.wait_for_replica(region, wait).await {
                summary.behind.push(behind);
                return "replica_behind";
            }
        }
        for (index, batch) in plan.batches.iter().enumerate() {
            if self.gates.lease.lost() && self.halt_first() {
                summary.failure = Some(StepFailure::region(region, &self.version, Cause::LockLost));
            }
            if let Some((failed, host, reason)) = self.shipping_failed() {
                // Another region's host could not get the release: change nothing more.
                self.halt_for_shipping(summary, &failed, host, reason);
            }
            if self.halted() {
                return "halted";
            }
            let hosts: Vec<String> = batch.iter().map(|step| step.host.clone()).collect();
            if let Err(failed) = self.wait_shipped(&hosts).await {
                return self.shipping_outcome(summary, region, failed);
            }
            let mut ports = Vec::new();
            for step in batch.iter().cloned() {
                // Beside the old instance, the new one needs a port of its own.
                let port = match step.previous.as_ref() {
                    Some(previous) if !step.beside => previous.port,
                    _ => self.pick_port(&step.host),
                };
                ports.push((step, port));
            }
            let watched = plan.canary == Some(index) && self.canary.is_some() && batch.iter().all(|s| s.beside);
            let results = if watched {
                let mut results = Vec::new();
                for (step, port) in ports {
                    match Arc::clone(self).watched(step, port).await {
                        Watched::Done(result) => results.push(*result),
                        Watched::Halted(unrecovered) => summary.unrecovered.extend(unrecovered),
                    }
                }
                results
            } else if plan.together && batch.iter().all(|s| s.beside) {
                let (results, unrecovered) = self.together(region, ports).await;
                summary.unrecovered.extend(unrecovered);
                results
            } else {
                let mut tasks = JoinSet::new();
                for (step, port) in ports {
                    tasks.spawn(Arc::clone(self).apply(step, port));
                }
                let mut results = Vec::new();
                while let Some(result) = tasks.join_next().await {
                    results.push(match result {
                        Ok(result) => result,
                        Err(join) => Err((
                            StepFailure::region(region, &self.version, Cause::Internal(join.to_string())),
                            Vec::new(),
                        )),
                    });
                }
                results
            };
            let mut failed = false;
            for result in results {
                match result {
                    Ok(done) => summary.changed.push(done),
                    Err((failure, unrecovered)) => {
                        self.halt.store(true, Ordering::SeqCst);
                        failed = true;
                        summary.unrecovered.extend(unrecovered);
                        summary.failure.get_or_insert(failure);
                    }
                }
            }
            if failed {
                return "failed";
            }
            if (plan.together || watched) && self.halted() {
                // Its new set (or its canary) went when another region failed.
                return "halted";
            }
        }
        // Hosts of the region that no batch needed must hold the release too.
        match self.wait_shipped(&region_hosts).await {
            Ok(()) => "succeeded",
            Err(failed) => self.shipping_outcome(summary, region, failed),
        }
    }

    /// The region's outcome when waiting for its hosts' release did not end well:
    /// `failed` (a host could not get it: the rollout halts) or `halted` (another
    /// region failed meanwhile).
    fn shipping_outcome(&self, summary: &mut Summary, region: &str, failed: Option<(String, String)>) -> &'static str {
        match failed {
            Some((host, reason)) => {
                self.halt_for_shipping(summary, region, host, reason);
                "failed"
            }
            None => "halted",
        }
    }

    /// A host whose shipping failed, if any: its region, name and why.
    fn shipping_failed(&self) -> Option<(String, String, String)> {
        self.gates.shipped.iter().find_map(|(host, receiver)| match &*receiver.borrow() {
            Some(Err(reason)) => {
                Some((self.hosts.get(host).map(|h| h.region.clone()).unwrap_or_default(), host.clone(), reason.clone()))
            }
            _ => None,
        })
    }

    /// Halts the rollout because `region`'s host could not get the release.
    fn halt_for_shipping(&self, summary: &mut Summary, region: &str, host: String, reason: String) {
        if self.halt_first() {
            summary.failure.get_or_insert(StepFailure::region(region, &self.version, Cause::Shipping { host, reason }));
        }
    }

    /// Waits until each of `hosts` still receiving the release has it: `Err` with
    /// the host that failed and why, or `Err(None)` when the rollout halted meanwhile.
    async fn wait_shipped(&self, hosts: &[String]) -> Result<(), Option<(String, String)>> {
        for (host, receiver) in hosts.iter().filter_map(|h| self.gates.shipped.get(h).map(|r| (h, r))) {
            let mut receiver = receiver.clone();
            loop {
                if let Some(ended) = receiver.borrow_and_update().clone() {
                    ended.map_err(|reason| Some((host.clone(), reason)))?;
                    break;
                }
                if self.halted() {
                    return Err(None);
                }
                tokio::select! {
                    changed = receiver.changed() => {
                        if changed.is_err() && receiver.borrow().is_none() {
                            return Err(Some((host.clone(), "shipping the release stopped before it ended".into())));
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
            match (wait.probe)().await {
                Ok(Some(replayed)) if replayed >= wait.target => {
                    self.reporter
                        .event(&Event::ReplicaCaughtUp { region: region.to_string(), replica: wait.replica.clone() });
                    return Ok(());
                }
                Ok(Some(replayed)) => {
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
                Ok(None) => last_error = Some("it is not a replica (pg_last_wal_replay_lsn() is NULL)".into()),
                Err(e) => last_error = Some(e),
            }
            if tokio::time::Instant::now() >= deadline || self.halted() {
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

    /// The step's instance's ports for the services after the first (`internal`):
    /// those its previous instance had when it `keeps` them (replaced in place), else
    /// fresh ones.
    fn extra_ports(&self, step: &Step, internal: &[u16], keeps: bool) -> BTreeMap<u16, u16> {
        let previous = step.previous.as_ref().filter(|_| keeps).map(|p| &p.ports);
        internal
            .iter()
            .map(|i| (*i, previous.and_then(|p| p.get(i).copied()).unwrap_or_else(|| self.pick_port(&step.host))))
            .collect()
    }

    fn pick_port(&self, host: &str) -> u16 {
        let local = self.hosts.get(host).is_none_or(|h| h.transport.is_local());
        self.ports.lock().map_or(0, |mut p| p.pick(host, local))
    }

    fn primary_addr(&self) -> Option<String> {
        self.primary_addr.lock().ok().and_then(|a| a.clone())
    }

    /// Moves one instance to the target version. On failure the instance gets its
    /// previous version back before this returns.
    async fn apply(self: Arc<Self>, step: Step, port: u16) -> StepResult {
        let ready = Arc::clone(&self).ready(step, port).await?;
        self.commit_one(ready).await
    }

    /// [`Self::commit`] of one ready instance.
    async fn commit_one(self: &Arc<Self>, ready: Ready) -> StepResult {
        let region = ready.step.region.clone();
        match self.commit(vec![ready]).await.pop() {
            Some(result) => result,
            None => Err((
                StepFailure::region(&region, &self.version, Cause::Internal("nothing was switched".into())),
                Vec::new(),
            )),
        }
    }

    /// A region's replacements all at once (bluegreen): every new instance starts
    /// beside its old one and must be ready; only then does the front door switch,
    /// one switch per host. When one fails (or the rollout halts meanwhile), the new
    /// ones go and the old ones, which never stopped serving, stay. Returns each
    /// step's result, and what could not be put back of the new instances when the
    /// rollout halted elsewhere.
    async fn together(self: &Arc<Self>, region: &str, steps: Vec<(Step, u16)>) -> (Vec<StepResult>, Vec<String>) {
        let mut tasks = JoinSet::new();
        for (step, port) in steps {
            tasks.spawn(Arc::clone(self).ready(step, port));
        }
        let mut ready = Vec::new();
        let mut results = Vec::new();
        while let Some(result) = tasks.join_next().await {
            match result {
                Ok(Ok(one)) => ready.push(one),
                Ok(Err(failed)) => {
                    self.halt.store(true, Ordering::SeqCst);
                    results.push(Err(failed));
                }
                Err(join) => {
                    self.halt.store(true, Ordering::SeqCst);
                    results.push(Err((
                        StepFailure::region(region, &self.version, Cause::Internal(join.to_string())),
                        Vec::new(),
                    )));
                }
            }
        }
        if self.halted() {
            let mut unrecovered = Vec::new();
            for one in ready {
                if let Err(problem) = self.revert_one(&one.host, &one.step, one.port, false).await {
                    unrecovered.push(problem);
                }
            }
            return (results, unrecovered);
        }
        (self.commit(ready).await, Vec::new())
    }

    /// The canary: once ready, it takes `canary_weight` percent of the clients beside
    /// the old instances for `canary_time`. Too many errors among its answers, or its
    /// exit, and it is removed (the old instances never stopped serving); else it
    /// replaces its old instance and the rollout goes on.
    async fn watched(self: Arc<Self>, step: Step, port: u16) -> Watched {
        let ready = match Arc::clone(&self).ready(step, port).await {
            Ok(ready) => ready,
            Err(failed) => return Watched::Done(Box::new(Err(failed))),
        };
        match self.watch(&ready).await {
            Ok(()) => {}
            // Another region failed (or the lock was lost): the canary goes quietly, the
            // failure that halted the rollout is the one reported.
            Err(None) => {
                let unrecovered: Vec<String> =
                    self.revert_one(&ready.host, &ready.step, ready.port, false).await.err().into_iter().collect();
                // A lost lock halts the rollout here, and is its failure.
                if self.gates.lease.lost() && self.halt_first() {
                    let failure = StepFailure::region(&ready.step.region, &self.version, Cause::LockLost);
                    return Watched::Done(Box::new(Err((failure, unrecovered))));
                }
                return Watched::Halted(unrecovered);
            }
            Err(Some(cause)) => {
                return Watched::Done(Box::new(Err(self.undo(&ready.host, &ready.step, ready.port, cause).await)))
            }
        }
        Watched::Done(Box::new(self.commit_one(ready).await))
    }

    /// Watches a ready canary under traffic: `Err(None)` when the rollout halted
    /// meanwhile.
    async fn watch(&self, ready: &Ready) -> Result<(), Option<Cause>> {
        let Some(canary) = self.canary.clone() else { return Ok(()) };
        let (host, id) = (&ready.host, ready.step.id.clone());
        let host_error = |step: &str, e: &crate::host::HostError| {
            Some(Cause::Host { step: step.into(), message: crate::error::chain(e) })
        };
        // The agent lets the canary go on its own a while after it should be over.
        let expires = canary.time + CANARY_GRACE;
        host.canary(vec![id.clone()], canary.weight, expires)
            .await
            .map_err(|e| host_error("routing to the canary", &e))?;
        self.reporter.event(&Event::CanaryWatched {
            region: ready.step.region.clone(),
            host: ready.step.host.clone(),
            instance: id.clone(),
            weight: canary.weight,
            secs: canary.time.as_secs_f64(),
        });
        // Judges one count: too many errors, or a process other than the one first
        // seen (it exited, was restarted).
        let first_pid = std::sync::Mutex::new(None::<u32>);
        let judge_counts = |counts: &[(String, u64, u64, u32)]| -> Result<(u64, u64), Option<Cause>> {
            // An agent that restarted meanwhile no longer counts it: nothing to judge.
            let Some(&(_, answered, errors, pid)) = counts.first() else { return Ok((0, 0)) };
            if answered >= CANARY_MIN_ANSWERS && errors * 100 > u64::from(canary.max_errors) * answered {
                return Err(Some(Cause::Canary { answered, errors, max_errors: canary.max_errors }));
            }
            let mut first = first_pid.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if pid == 0 || first.is_some_and(|p| p != pid) {
                return Err(Some(Cause::Host {
                    step: "watching the canary".into(),
                    message: "it exited (or was restarted) while it was watched".into(),
                }));
            }
            *first = Some(pid);
            Ok((answered, errors))
        };
        let judge = async {
            loop {
                tokio::time::sleep(CANARY_POLL).await;
                let counts = host
                    .traffic(vec![id.clone()])
                    .await
                    .map_err(|e| host_error("counting the canary's answers", &e))?;
                judge_counts(&counts)?;
                if self.halted() || self.gates.lease.lost() {
                    return Err(None);
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep(canary.time) => {}
            failed = judge => failed?,
        }
        let counts =
            host.traffic(vec![id.clone()]).await.map_err(|e| host_error("counting the canary's answers", &e))?;
        let (answered, _) = judge_counts(&counts)?;
        if answered < CANARY_MIN_ANSWERS {
            self.reporter.event(&Event::Warning {
                message: format!(
                    "the canary {id} in {} answered {answered} request(s) in {}s, too few to judge its errors; it goes on the strength of its checks",
                    ready.step.region,
                    canary.time.as_secs()
                ),
            });
        }
        Ok(())
    }

    /// Starts one instance of the target version and waits until it may take traffic:
    /// it passed its checks and, beside an old one, stayed up `min_healthy` (in its
    /// old one's place, it is watched through `min_healthy` while the rollout goes
    /// on). A failure has been reverted when this returns.
    async fn ready(self: Arc<Self>, step: Step, port: u16) -> Result<Ready, (StepFailure, Vec<String>)> {
        let Some(host) = self.hosts.get(&step.host).cloned() else {
            let failure = step_failure(&step, Cause::Internal(format!("unknown host `{}`", step.host)));
            return Err((failure, Vec::new()));
        };
        self.reporter.event(&Event::InstanceUpdating {
            region: step.region.clone(),
            group: step.group.clone(),
            host: step.host.clone(),
            instance: step.id.clone(),
            from: step.previous.as_ref().map(|p| p.version.clone()),
            to: step.to.clone(),
        });
        let created_at = step.previous.as_ref().map_or_else(now_ms, |p| p.created_at);
        let mut record = instance::record(&step, &step.to, port, created_at, self.spec(&step.group).identity());
        let internal = self.spec(&step.group).instance.extra_ports.clone();
        record.ports = self.extra_ports(&step, &internal, !step.beside);
        let primary_addr = self.primary_addr();
        let replace = step.was_alive && !step.beside;
        let waiting = AbortOnDrop(self.report_waiting(&host, &step));
        let started =
            instance::start_and_wait(self.spec(&step.group), &host, &record, replace, primary_addr.as_deref()).await;
        drop(waiting);
        let healthy = match started {
            Ok(started) => self.healthy(&host, &step, &record, started).await,
            Err(cause) => Err(cause),
        };
        match healthy {
            Ok(()) => Ok(Ready { host, step, port }),
            Err(cause) => Err(self.undo(&host, &step, port, cause).await),
        }
    }

    /// Says, every few seconds once a wait is no longer short, how long the step's new
    /// instance has waited for its checks and what the last one said; ends when aborted.
    fn report_waiting(&self, host: &Host, step: &Step) -> tokio::task::AbortHandle {
        let (host, step, reporter) = (host.clone(), step.clone(), Arc::clone(&self.reporter));
        let deadline = self.spec(&step.group).wait_timeout;
        let begun = tokio::time::Instant::now();
        tokio::spawn(async move {
            let mut next = begun + WAIT_QUIET;
            loop {
                tokio::time::sleep_until(next).await;
                next += WAIT_REPORT_EVERY;
                let state = host.observe().await.ok();
                let instance = state.and_then(|s| s.instances.into_iter().find(|i| i.record.id == step.id));
                let last_check = instance.and_then(|i| i.runtime.health).and_then(|h| h.detail);
                reporter.event(&Event::InstanceWaiting {
                    region: step.region.clone(),
                    group: step.group.clone(),
                    host: step.host.clone(),
                    instance: step.id.clone(),
                    version: step.to.clone(),
                    elapsed_ms: super::millis(begun.elapsed()),
                    deadline_ms: super::millis(deadline),
                    last_check,
                });
            }
        })
        .abort_handle()
    }

    /// Reports the step's failure and puts its instance back; the failure and what
    /// could not be put back.
    async fn undo(&self, host: &Host, step: &Step, port: u16, cause: Cause) -> (StepFailure, Vec<String>) {
        self.failed(host, step, &cause).await;
        let unrecovered = match self.revert_one(host, step, port, false).await {
            Ok(()) => Vec::new(),
            Err(problem) => vec![problem],
        };
        (step_failure(step, cause), unrecovered)
    }

    /// A started instance passed its checks: said at once (what follows is not the
    /// instance's time). Beside an old one it must then stay up `min_healthy` before
    /// it may take traffic; in its old one's place it is watched through
    /// `min_healthy` while the rollout goes on.
    async fn healthy(
        self: &Arc<Self>,
        host: &Host,
        step: &Step,
        record: &crate::host::InstanceRecord,
        started: instance::Started,
    ) -> Result<(), Cause> {
        if step.region == self.primary {
            if let Ok(mut addr) = self.primary_addr.lock() {
                addr.get_or_insert_with(|| format!("{}:{}", host.address(), record.port));
            }
        }
        self.reporter.event(&Event::InstanceHealthy {
            region: step.region.clone(),
            group: step.group.clone(),
            host: step.host.clone(),
            instance: step.id.clone(),
            version: step.to.clone(),
            port: record.port,
            elapsed_ms: u64::try_from(started.elapsed.as_millis()).unwrap_or(u64::MAX),
        });
        if !step.beside || step.previous.is_none() {
            self.settle(host.clone(), step, record.clone(), started.pid);
            return Ok(());
        }
        // Reachable with the preview header until the switch; an agent that cannot
        // preview (an older one still busy with another call) is no reason to fail.
        let _ = host.preview(vec![step.id.clone()]).await;
        if !self.min_healthy.is_zero() {
            instance::stabilize(host, record, started.pid, self.min_healthy).await?;
        }
        Ok(())
    }

    /// Switches the front door to instances that are ready, with one switch per host
    /// (all hosts at once): each takes traffic, the old instance it replaces is
    /// drained and stopped. A failed one has been reverted. The hosts switch one by
    /// one: when one fails after another switched, the switched one is reverted
    /// with the rest of the rollout.
    async fn commit(self: &Arc<Self>, ready: Vec<Ready>) -> Vec<StepResult> {
        let mut by_host: BTreeMap<String, Vec<Ready>> = BTreeMap::new();
        for one in ready {
            by_host.entry(one.step.host.clone()).or_default().push(one);
        }
        let mut tasks = JoinSet::new();
        for (_, group) in by_host {
            let this = Arc::clone(self);
            tasks.spawn(async move {
                let host = group[0].host.clone();
                let add: Vec<String> = group.iter().map(|r| r.step.id.clone()).collect();
                let retire: Vec<String> = group
                    .iter()
                    .filter(|r| r.step.beside)
                    .filter_map(|r| r.step.previous.as_ref().map(|p| p.id.clone()))
                    .collect();
                let switched = host.cutover(add, retire, &this.spec(&group[0].step.group).stop()).await.map_err(|e| {
                    Cause::Host { step: "switching the front door".into(), message: crate::error::chain(&e) }
                });
                let mut results = Vec::new();
                for one in group {
                    results.push(match &switched {
                        Ok(()) => Ok((one.step, one.port)),
                        Err(cause) => Err(this.undo(&one.host, &one.step, one.port, cause.clone()).await),
                    });
                }
                results
            });
        }
        let mut all = Vec::new();
        while let Some(results) = tasks.join_next().await {
            match results {
                Ok(results) => all.extend(results),
                Err(join) => all.push(Err((
                    StepFailure::region(&self.primary, &self.version, Cause::Internal(join.to_string())),
                    Vec::new(),
                ))),
            }
        }
        all
    }

    /// Puts one instance back as it was before this rollout touched it.
    /// `switched`: the step went through (its old instance, beside, is gone).
    async fn revert_one(&self, host: &Host, step: &Step, port: u16, switched: bool) -> Result<(), String> {
        let primary_addr = self.primary_addr();
        let reverted = if step.beside {
            if switched {
                let port = self.pick_port(&step.host);
                let internal: Vec<u16> =
                    step.previous.as_ref().map(|p| p.ports.keys().copied().collect()).unwrap_or_default();
                let ports = self.extra_ports(step, &internal, false);
                instance::revert_beside(self.spec(&step.group), host, step, (port, ports), primary_addr.as_deref())
                    .await
            } else {
                // The old instance never stopped taking traffic: the new one just goes.
                host.remove_instance(&step.id).await.map_err(|e| e.to_string())
            }
        } else {
            instance::revert(self.spec(&step.group), host, step, port, primary_addr.as_deref()).await
        };
        match reverted {
            Ok(()) => {
                self.reporter.event(&Event::InstanceReverted {
                    region: step.region.clone(),
                    host: step.host.clone(),
                    instance: step.id.clone(),
                    version: step.revert_to.clone().filter(|_| step.previous.is_some()),
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
                    match this.revert_one(&host, &step, port, true).await {
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
