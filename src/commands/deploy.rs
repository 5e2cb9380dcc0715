//! `ferry deploy` and `ferry rollback`: observe, lock, ship the release, run the
//! release_command once, roll out behind health checks, record, prune, unlock.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Strategy;
use crate::deploy::{port_picker, Gates, ReplicaWait, Rollout, Summary};
use crate::error::Error;
use crate::fleet::Fleet;
use crate::health::Checks;
use crate::history::{self, Record, Status};
use crate::host::lock::Guard;
use crate::host::{Host, HostState};
use crate::plan::{self, Plan, RegionSpec};
use crate::report::{Event, Outcome};

use super::build::{self, Artifact};
use super::ship::Shipment;
use super::{healthy_on, lock, millis, new_instance_id, observe, read_history, record_history, Ctx};

#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    pub version: Option<String>,
    pub release: Option<PathBuf>,
    pub dry_run: bool,
    pub no_revert: bool,
    pub wait_timeout: Option<Duration>,
    pub strategy: Option<Strategy>,
    pub lock_wait: Option<Duration>,
    pub skip_release_command: bool,
    /// Take a backup before the release_command even without `before_migrate`.
    pub backup: bool,
}

#[derive(Debug, Clone, Default)]
pub struct RollbackOptions {
    pub restore_backup: bool,
    pub yes: bool,
    pub version: Option<String>,
    pub dry_run: bool,
    pub no_revert: bool,
    pub wait_timeout: Option<Duration>,
    pub lock_wait: Option<Duration>,
}

pub async fn deploy(ctx: &Ctx, opts: DeployOptions) -> Result<(), Error> {
    let started = Instant::now();
    let strategy = opts.strategy.unwrap_or(ctx.config.deploy.strategy);
    refuse_unsupported(strategy)?;
    let fleet = Fleet::from_config(&ctx.config, &ctx.ssh)?;
    if opts.dry_run {
        let version = match &opts.release {
            Some(path) => build::take(ctx, path.clone()).await?.version,
            None => crate::release::resolve_version(opts.version.as_deref(), &ctx.config.dir)?,
        };
        return dry_run(ctx, &fleet, &version, strategy).await;
    }
    let artifact = async {
        match &opts.release {
            Some(path) => build::take(ctx, path.clone()).await,
            None => build::build(ctx, opts.version.clone()).await,
        }
    };
    // Connecting to the hosts overlaps building or inspecting the release.
    let hosts: Vec<Host> = fleet.hosts().cloned().collect();
    let (artifact, connected) = tokio::join!(artifact, super::connect_all(&hosts));
    let artifact = artifact?;
    connected?;
    let start = start_command(ctx, &artifact)?;
    let mut guard = lock(ctx, &fleet, "deploy", opts.lock_wait).await?;
    let result = deploy_locked(ctx, &fleet, &mut guard, &artifact, &start, strategy, &opts, started).await;
    guard.release().await;
    result
}

fn refuse_unsupported(strategy: Strategy) -> Result<(), Error> {
    if strategy == Strategy::Bluegreen {
        return Err(Error::Usage {
            message: "the `bluegreen` deploy strategy is not supported by ferry yet".into(),
            hint: Some(
                "use `strategy = \"rolling\"` or `\"canary\"` in `[deploy]`, or pass `--strategy rolling`".into(),
            ),
        });
    }
    Ok(())
}

/// The command that runs one instance: `[ferry.build] start`, `[processes] app`, or
/// an executable `bin/start` shipped in the release.
fn start_command(ctx: &Ctx, artifact: &Artifact) -> Result<String, Error> {
    if let Some(start) = ctx.config.start_command() {
        return Ok(start.to_string());
    }
    if artifact.manifest.files.iter().any(|f| f.path == "bin/start") {
        return Ok("bin/start".to_string());
    }
    Err(Error::Usage {
        message: format!("no start command for `{}`: set `[ferry.build] start`, or `[processes] app`, or ship an executable `bin/start` in the release", ctx.config.app),
        hint: Some("for example: `[ferry.build]` `start = \"bin/hello start\"` (it must run one instance in the foreground and listen on $PORT)".into()),
    })
}

fn region_specs(fleet: &Fleet) -> Vec<RegionSpec> {
    fleet
        .regions
        .iter()
        .map(|r| RegionSpec {
            name: r.name.clone(),
            primary: r.primary,
            count: r.count,
            hosts: r.hosts.iter().map(|h| h.name.clone()).collect(),
        })
        .collect()
}

fn make_plan(
    ctx: &Ctx,
    fleet: &Fleet,
    observed: &BTreeMap<String, HostState>,
    healthy: &BTreeSet<String>,
    version: &str,
    strategy: Strategy,
) -> Plan {
    let regions = region_specs(fleet);
    let mounts: Vec<String> = crate::deploy::app_mounts(&ctx.config).iter().map(|m| m.source.clone()).collect();
    let inputs = plan::Inputs {
        regions: &regions,
        observed,
        healthy,
        version,
        strategy: if ctx.config.ferry.primary_last { Strategy::Rolling } else { strategy },
        max_unavailable: if ctx.config.ferry.primary_last {
            crate::config::MaxUnavailable::Count(1)
        } else {
            ctx.config.deploy.max_unavailable
        },
        mounts: &mounts,
    };
    plan::rollout(&inputs, &mut new_instance_id)
}

async fn dry_run(ctx: &Ctx, fleet: &Fleet, version: &str, strategy: Strategy) -> Result<(), Error> {
    let observed = observe(fleet).await?;
    let mut warnings = Vec::new();
    let checks = Checks::from_config(&ctx.config, &mut warnings);
    let healthy = healthy_on(fleet, &observed, &checks, version).await;
    let plan = make_plan(ctx, fleet, &observed, &healthy, version, strategy);
    check_volumes(ctx, fleet, &observed, &plan)?;
    report_plan(ctx, &plan);
    ctx.event(Event::Finished {
        outcome: Outcome::Succeeded,
        version: Some(version.to_string()),
        previous: None,
        message: if plan.is_noop() {
            format!("dry run: {version} already runs everywhere; nothing to do")
        } else {
            "dry run: nothing was changed".into()
        },
        duration_ms: 0,
    });
    Ok(())
}

fn report_plan(ctx: &Ctx, plan: &Plan) {
    for region in &plan.regions {
        for (n, batch) in region.batches.iter().enumerate() {
            for step in batch {
                let action = match step.action {
                    plan::Action::Create => "create".to_string(),
                    plan::Action::Replace => format!("replace (batch {})", n + 1),
                    plan::Action::Keep => "keep".to_string(),
                };
                ctx.event(Event::Plan {
                    region: step.region.clone(),
                    instance: step.id.clone(),
                    host: step.host.clone(),
                    action,
                    from: step.previous.as_ref().map(|p| p.version.clone()),
                    to: step.to.clone(),
                });
            }
        }
        for step in &region.unchanged {
            ctx.event(Event::Plan {
                region: step.region.clone(),
                instance: step.id.clone(),
                host: step.host.clone(),
                action: "keep".into(),
                from: Some(step.to.clone()),
                to: step.to.clone(),
            });
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn deploy_locked(
    ctx: &Ctx,
    fleet: &Fleet,
    guard: &mut Guard,
    artifact: &Artifact,
    start: &str,
    strategy: Strategy,
    opts: &DeployOptions,
    started: Instant,
) -> Result<(), Error> {
    let version = artifact.version.clone();
    let observed = guard.observed().clone();
    let mut warnings = Vec::new();
    let checks = Checks::from_config(&ctx.config, &mut warnings);
    for warning in warnings {
        ctx.warn(warning);
    }
    // What the hosts will be sent is readied meanwhile (a release of compressed files
    // is decompressed once, to ship as plain tar).
    let (healthy, entries, shipment) = tokio::join!(
        healthy_on(fleet, &observed, &checks, &version),
        read_history(fleet),
        Shipment::prepare(ctx, artifact, &observed, fleet.hosts())
    );
    let plan = make_plan(ctx, fleet, &observed, &healthy, &version, strategy);
    check_volumes(ctx, fleet, &observed, &plan)?;
    let mut previous = current_from(fleet, &observed, &entries);
    let installed_everywhere = fleet.hosts().all(|h| observed.get(&h.name).is_some_and(|s| s.has_release(&version)));
    let (history_current, history_previous) = history::current(&entries);
    if plan.is_noop() && installed_everywhere && previous.as_deref() == Some(version.as_str()) {
        if history_current.as_deref() != Some(version.as_str()) {
            // Killed after the hosts were switched but before the history said so.
            let record = Record::new("deploy", &version, history_current.clone());
            record_history(ctx, fleet, &record.finished(Status::Complete, None)).await;
        }
        ctx.event(Event::Finished {
            outcome: Outcome::Succeeded,
            version: Some(version.clone()),
            previous,
            message: format!("{version} already runs and is healthy everywhere; nothing changed"),
            duration_ms: millis(started.elapsed()),
        });
        return Ok(());
    }
    if previous.as_deref() == Some(version.as_str()) {
        // An earlier, partial run of this deploy marked some hosts current already;
        // what ran before it is what the history last completed.
        previous =
            if history_current.as_deref() == Some(version.as_str()) { history_previous } else { history_current };
    }
    ctx.event(Event::DeployStarted {
        kind: "deploy".into(),
        app: ctx.config.app.clone(),
        version: version.clone(),
        previous: previous.clone(),
        strategy: format!("{strategy:?}").to_lowercase(),
        regions: fleet.region_names(),
    });
    let record = Record::new("deploy", &version, previous.clone());
    let migration = ctx.config.deploy.release_command.clone().filter(|_| !opts.skip_release_command);
    // The hosts of the primary region's first batch get the release first; the rest of
    // the primary region's next, while that batch rolls out; then the other regions'.
    // Each batch waits only for its own hosts, and a region other than the primary
    // for all of its hosts. A migration changes what cannot be reverted, so it waits
    // for every host.
    let ahead = migration.is_none() && !ctx.config.ferry.primary_last;
    let primary = ctx.config.primary();
    let first: BTreeSet<&str> = plan
        .regions
        .iter()
        .filter(|r| r.primary)
        .filter_map(|r| r.batches.first())
        .flatten()
        .map(|step| step.host.as_str())
        .collect();
    let (now, later): (Vec<Host>, Vec<Host>) =
        fleet.hosts().cloned().partition(|h| !ahead || first.contains(h.name.as_str()));
    let (soon, later): (Vec<Host>, Vec<Host>) = later.into_iter().partition(|h| h.region == primary);
    // The history says a deploy started while the release travels.
    let source = now.iter().find(|h| h.transport.is_local()).cloned();
    let (shipped, ()) =
        tokio::join!(shipment.send(ctx, now, &observed, None, &|_, _| {}), record_history(ctx, fleet, &record));
    if let Err(error) = shipped {
        record_history(ctx, fleet, &record.finished(Status::Failed, Some(error.to_string()))).await;
        return Err(error);
    }
    if let Err(error) = super::secrets::sync(ctx, fleet, &observed).await {
        record_history(ctx, fleet, &record.finished(Status::Failed, Some(error.to_string()))).await;
        return Err(error);
    }
    let mut gates = Gates::default();
    if let Some(command) = migration {
        if opts.backup || ctx.config.ferry.backup.before_migrate {
            if let Err(error) = super::backups::take(ctx, fleet, previous.clone(), Some(version.clone())).await {
                record_history(ctx, fleet, &record.finished(Status::Failed, Some(error.to_string()))).await;
                ctx.event(Event::Finished {
                    outcome: Outcome::Failed,
                    version: Some(version.clone()),
                    previous: previous.clone(),
                    message: "the backup failed, so the migration did not run; no instance was changed".into(),
                    duration_ms: millis(started.elapsed()),
                });
                return Err(error);
            }
        }
        if let Err(error) = release_command(ctx, fleet, &version, &command).await {
            record_history(ctx, fleet, &record.finished(Status::Failed, Some(error.to_string()))).await;
            ctx.event(Event::Finished {
                outcome: Outcome::Failed,
                version: Some(version.clone()),
                previous: previous.clone(),
                message: format!(
                    "release_command failed; no instance was changed, {} still runs",
                    previous.as_deref().unwrap_or("the old version")
                ),
                duration_ms: millis(started.elapsed()),
            });
            return Err(error);
        }
        match replica_waits(ctx, fleet).await {
            Ok(found) => gates.replicas = found,
            Err(error) => {
                record_history(ctx, fleet, &record.finished(Status::Failed, Some(error.to_string()))).await;
                return Err(error);
            }
        }
    }
    let mut senders = BTreeMap::new();
    for host in soon.iter().chain(&later) {
        let (tx, rx) = tokio::sync::watch::channel(None);
        senders.insert(host.name.clone(), tx);
        gates.shipped.insert(host.name.clone(), rx);
    }
    let heard = |host: &str, result: Result<(), String>| {
        if let Some(tx) = senders.get(host) {
            tx.send_replace(Some(result));
        }
    };
    let wait = opts.wait_timeout.unwrap_or(ctx.config.deploy.wait_timeout);
    // A rollout that failed does not wait for uploads nobody needs any more: they are
    // cut off (the host removes what it half received). Every upload has ended before
    // the outcome is recorded and the lock released.
    let (failed, mut on_failure) = tokio::sync::watch::channel(false);
    let shipping = async {
        // Each phase reports every host's outcome; a failure halts the rollout, which
        // then cuts off the rest.
        let _ = shipment.send(ctx, soon, &observed, source.clone(), &heard).await;
        let _ = shipment.send(ctx, later, &observed, source, &heard).await;
    };
    let ((), summary) = tokio::join!(
        async {
            tokio::select! {
                () = shipping => {}
                _ = on_failure.wait_for(|failed| *failed) => {}
            }
        },
        async {
            let summary = roll_out(ctx, fleet, &observed, checks, start, wait, opts.no_revert, plan, gates).await;
            failed.send_replace(summary.failure.is_some());
            summary
        }
    );
    let done = Done { record: &record, summary: &summary, observed: &observed, kind: "deploy" };
    finish(ctx, fleet, guard, &done, previous, started).await
}

/// After a migration: the primary's WAL position, and for every non-primary region
/// that names its read replica, a wait for that replica to replay it. Databases are
/// reached directly on the local target and through the region's first host over SSH.
async fn replica_waits(ctx: &Ctx, fleet: &Fleet) -> Result<BTreeMap<String, ReplicaWait>, Error> {
    let mut waits = BTreeMap::new();
    let regions: Vec<_> = fleet
        .regions
        .iter()
        .filter(|r| !r.primary)
        .filter_map(|r| ctx.config.ferry.regions.get(&r.name).map(|c| (r, c)))
        .filter(|(_, c)| c.replica_url.is_some() || c.replica_url_env.is_some())
        .collect();
    if regions.is_empty() {
        return Ok(waits);
    }
    let Some(primary_host) = fleet.primary().and_then(|r| r.hosts.first()) else { return Ok(waits) };
    let var = ctx.config.ferry.backup.database_url_env.clone();
    let primary_url = super::backups::url_from(ctx, primary_host, &var).await?;
    let primary_db =
        crate::postgres::Database::from_url(&var, &primary_url).map_err(|e| Error::usage(e.to_string()))?;
    let via = forward(primary_host, &primary_db).await?;
    let target = crate::postgres::query_text(&primary_url, via, "SELECT pg_current_wal_lsn()::text")
        .await
        .ok()
        .flatten()
        .and_then(|t| t.parse::<crate::postgres::Lsn>().ok())
        .ok_or_else(|| Error::Failed {
            message: format!(
                "cannot read the primary's WAL position from `{}`, so replicas cannot be waited for",
                primary_db.describe()
            ),
            hint: Some("the migration ran, no instance changed; check the database and deploy again".into()),
        })?;
    for (region, config) in regions {
        let Some(host) = region.hosts.first() else { continue };
        let url = match (&config.replica_url, &config.replica_url_env) {
            (Some(url), _) => url.clone(),
            (None, Some(env)) => super::backups::url_from(ctx, host, env).await?,
            (None, None) => continue,
        };
        let name =
            config.replica_url_env.clone().unwrap_or_else(|| format!("ferry.regions.{}.replica_url", region.name));
        let db = crate::postgres::Database::from_url(&name, &url).map_err(|e| Error::usage(e.to_string()))?;
        let via = forward(host, &db).await?;
        waits.insert(
            region.name.clone(),
            ReplicaWait { url, replica: db.describe(), via, target, timeout: ctx.config.ferry.replica_wait_timeout },
        );
    }
    Ok(waits)
}

async fn forward(host: &Host, db: &crate::postgres::Database) -> Result<Option<std::net::SocketAddr>, Error> {
    host.transport
        .forward_to(&db.host, db.port)
        .await
        .map_err(|e| Error::Host { step: "reaching the database", source: e.into() })
}

/// What the hosts say is current (the primary's `current`).
fn current_on_hosts(fleet: &Fleet, observed: &BTreeMap<String, HostState>) -> Option<String> {
    fleet.hosts().find_map(|h| observed.get(&h.name).and_then(|s| s.current.clone()))
}

/// What the hosts say is current, else the history (read only then).
async fn current_version(fleet: &Fleet, observed: &BTreeMap<String, HostState>) -> Option<String> {
    match current_on_hosts(fleet, observed) {
        Some(current) => Some(current),
        None => history::current(&read_history(fleet).await).0,
    }
}

/// [`current_version`] with the history already read.
fn current_from(fleet: &Fleet, observed: &BTreeMap<String, HostState>, entries: &[history::Entry]) -> Option<String> {
    current_on_hosts(fleet, observed).or_else(|| history::current(entries).0)
}

/// Runs the release_command once on the primary region's first host.
pub async fn release_command(ctx: &Ctx, fleet: &Fleet, version: &str, command: &str) -> Result<(), Error> {
    let Some(host) = fleet.primary().and_then(|r| r.hosts.first()) else {
        return Err(Error::failed("no host in the primary region to run the release_command on"));
    };
    ctx.event(Event::ReleaseCommandStarted { host: host.name.clone(), command: command.to_string() });
    let mut env = ctx.config.env.clone();
    for (key, value) in [
        ("RELEASE_COMMAND", "1".to_string()),
        ("FLY_PROCESS_GROUP", "fly_app_release_command".to_string()),
        ("FLY_APP_NAME", ctx.config.app.clone()),
        ("FLY_REGION", host.region.clone()),
        ("PRIMARY_REGION", ctx.config.primary()),
        ("RELEASE_VERSION", version.to_string()),
    ] {
        env.insert(key.to_string(), value);
    }
    let tail = Arc::new(Mutex::new(Vec::<String>::new()));
    let reporter = ctx.reporter.clone();
    let lines = Arc::clone(&tail);
    let on_line = move |line: &str| {
        if let Ok(mut lines) = lines.lock() {
            lines.push(line.to_string());
            let excess = lines.len().saturating_sub(crate::deploy::LOG_LINES);
            lines.drain(..excess);
        }
        reporter.event(&Event::ReleaseCommandOutput { line: line.to_string() });
    };
    let started = Instant::now();
    let status = host
        .run_release_command(version, command, &env, ctx.config.deploy.release_command_timeout, &on_line)
        .await
        .map_err(|source| Error::Host { step: "running the release_command", source })?;
    ctx.event(Event::ReleaseCommandFinished {
        host: host.name.clone(),
        success: status.success(),
        exit_code: status.code(),
        duration_ms: millis(started.elapsed()),
    });
    if status.success() {
        return Ok(());
    }
    let timed_out = status.code() == Some(124) || status.code() == Some(137);
    let why = if timed_out {
        format!(
            "timed out after {}",
            ctx.config
                .deploy
                .release_command_timeout
                .map(humantime::format_duration)
                .map_or_else(String::new, |d| d.to_string())
        )
    } else {
        format!("exited with {}", status.code().map_or_else(|| "a signal".to_string(), |c| c.to_string()))
    };
    let last = tail.lock().map(|lines| {
        lines.iter().fold(String::new(), |mut text, l| {
            use std::fmt::Write as _;
            let _ = write!(text, "\n    | {l}");
            text
        })
    });
    let last = last.unwrap_or_default();
    Err(Error::Failed {
        message: format!("release_command `{command}` {why} on `{}`; no instance was changed{}", host.name, if last.is_empty() { String::new() } else { format!("\n  its last lines:{last}") }),
        hint: Some("its output is above (and in `release_command.log` on the host); fix it and deploy again, or pass `--skip-release-command`".into()),
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn roll_out(
    ctx: &Ctx,
    fleet: &Fleet,
    observed: &BTreeMap<String, HostState>,
    checks: Checks,
    start: &str,
    wait: Duration,
    no_revert: bool,
    plan: Plan,
    gates: Gates,
) -> Summary {
    let hosts: BTreeMap<String, Host> = fleet.hosts().map(|h| (h.name.clone(), h.clone())).collect();
    let ports = port_picker(&with_listening(ctx, fleet, observed, &plan).await);
    let mut rollout = Rollout::new(
        hosts,
        ctx.config.clone(),
        checks,
        ctx.reporter.clone(),
        start.to_string(),
        wait,
        no_revert,
        ports,
    );
    rollout.replica_waits = gates.replicas;
    rollout.shipped = gates.shipped;
    let primary = ctx.config.primary();
    let primary_addr = fleet.hosts().filter(|h| h.region == primary).find_map(|h| {
        observed
            .get(&h.name)?
            .instances
            .iter()
            .find(|i| i.alive && i.record.region == primary)
            .map(|i| format!("{}:{}", h.address(), i.record.port))
    });
    rollout.primary_addr = std::sync::Mutex::new(primary_addr);
    Arc::new(rollout).execute(plan).await
}

/// What a rollout came to, for [`finish`].
struct Done<'a> {
    record: &'a Record,
    summary: &'a Summary,
    /// The hosts as observed under the lock, before the rollout.
    observed: &'a BTreeMap<String, HostState>,
    /// `deploy`, `rollback` or `restart`.
    kind: &'a str,
}

/// `observed`, with the ports listening on each SSH host where the plan creates an
/// instance (a new instance's port must avoid them); other hosts need no ports.
async fn with_listening(
    ctx: &Ctx,
    fleet: &Fleet,
    observed: &BTreeMap<String, HostState>,
    plan: &Plan,
) -> BTreeMap<String, HostState> {
    let creating: BTreeSet<&str> = plan
        .regions
        .iter()
        .flat_map(|r| r.batches.iter().flatten())
        .filter(|step| step.previous.is_none())
        .map(|step| step.host.as_str())
        .collect();
    let hosts = fleet.hosts().filter(|h| !h.transport.is_local() && creating.contains(h.name.as_str())).cloned();
    let listening = crate::host::on_each(hosts, |host| async move { host.listening().await }).await;
    let mut observed = observed.clone();
    for (name, ports) in listening {
        match (ports, observed.get_mut(&name)) {
            (Ok(ports), Some(state)) => state.listening = ports,
            (Err(e), _) => ctx.warn(format!(
                "could not list the ports in use on `{name}` ({e}); new instances there get a random free-looking port"
            )),
            _ => {}
        }
    }
    observed
}

/// Records the outcome, marks the release current and prunes on success (releasing
/// the lock in the same round trip), and turns a failure into an error that says
/// what was restored.
async fn finish(
    ctx: &Ctx,
    fleet: &Fleet,
    guard: &mut Guard,
    done: &Done<'_>,
    previous: Option<String>,
    started: Instant,
) -> Result<(), Error> {
    let (record, summary, kind) = (done.record, done.summary, done.kind);
    let version = record.version.clone();
    let outcome = summary.outcome();
    if summary.failure.is_none() && !summary.behind.is_empty() {
        return finish_behind(ctx, fleet, guard, record, summary, previous, started).await;
    }
    let Some(failure) = &summary.failure else {
        let complete = record.finished(Status::Complete, None);
        // A rollback or restart brings no new release, so it leaves nothing to prune.
        let prune = if kind == "deploy" {
            to_prune(ctx.config.ferry.keep_releases, done.observed, &summary.changed, &version, previous.as_deref())
        } else {
            BTreeMap::new()
        };
        finish_hosts(ctx, fleet, guard, &complete, |_| true, &prune).await;
        ctx.event(Event::Finished {
            outcome,
            version: Some(version.clone()),
            previous,
            message: format!("{version} is live everywhere"),
            duration_ms: millis(started.elapsed()),
        });
        return Ok(());
    };
    let what = if failure.instance == "-" {
        format!("in region {}: {}", failure.region, failure.reason)
    } else {
        format!(
            "instance {} in {} on `{}` failed on {version}: {}",
            failure.instance, failure.region, failure.host, failure.reason
        )
    };
    let back_to = previous.clone().unwrap_or_else(|| "the previous state".into());
    let (status, now) = match outcome {
        Outcome::Reverted => (Status::Reverted, format!("every instance was put back on {back_to}")),
        _ if !summary.unrecovered.is_empty() => {
            (Status::Failed, format!("these instances could not be put back: {}", summary.unrecovered.join("; ")))
        }
        _ => (Status::Failed, format!("--no-revert: {} instance(s) were left on {version}", summary.changed.len())),
    };
    finish_hosts(ctx, fleet, guard, &record.finished(status, Some(what.clone())), |_| false, &BTreeMap::new()).await;
    ctx.event(Event::Finished {
        outcome,
        version: Some(version.clone()),
        previous,
        message: now.clone(),
        duration_ms: millis(started.elapsed()),
    });
    Err(Error::Failed {
        message: format!("{kind} of {version} failed: {what}; {now}"),
        hint: Some(failure.hint.clone().unwrap_or_else(|| "see the instance's last log lines above; `ferry status` shows where things stand, `ferry logs -i ID` shows more".into())),
    })
}

/// On every host at once, in one round trip each: records `record`, marks its
/// version current where `marked` says so, prunes what `prune` names for that host,
/// and releases the lock. A step that fails on a host is warned about: the rollout
/// itself already happened.
async fn finish_hosts(
    ctx: &Ctx,
    fleet: &Fleet,
    guard: &mut Guard,
    record: &Record,
    marked: impl Fn(&Host) -> bool,
    prune: &BTreeMap<String, Vec<String>>,
) {
    let version = record.version.as_str();
    let token = guard.token().to_string();
    let line = record.to_line();
    guard.stop_refreshing();
    let mark: BTreeSet<String> = fleet.hosts().filter(|h| marked(h)).map(|h| h.name.clone()).collect();
    let finished = crate::host::on_each(fleet.hosts().cloned(), |host| {
        let (token, line) = (token.clone(), line.clone());
        let current = mark.contains(&host.name).then(|| version.to_string());
        let prune = prune.get(&host.name).cloned().unwrap_or_default();
        async move { host.finish(Some(&token), current.as_deref(), Some(&line), &prune).await }
    })
    .await;
    // Where the script failed, the lock may still be there: `Guard::release` then
    // gives it back on every host (a no-op where it is gone).
    if finished.iter().all(|(_, result)| result.as_ref().is_ok_and(|done| done.error.is_none())) {
        guard.mark_released();
    }
    for (host, result) in finished {
        let done = match result {
            Ok(done) => done,
            Err(e) => {
                let marking = if mark.contains(&host) { format!("mark {version} current, ") } else { String::new() };
                ctx.warn(format!("could not {marking}record history or release the lock on `{host}`: {e}"));
                continue;
            }
        };
        if !done.current && mark.contains(&host) {
            ctx.warn(format!("could not mark {version} current on `{host}`"));
        }
        if !done.history {
            ctx.warn(format!("could not record history on `{host}`"));
        }
        for wanted in prune.get(&host).into_iter().flatten() {
            if done.pruned.contains(wanted) {
                ctx.event(Event::Pruned { host: host.clone(), version: wanted.clone() });
            } else {
                ctx.warn(format!("could not prune {wanted} on `{host}`"));
            }
        }
        if let Some(error) = done.error {
            ctx.warn(format!("finishing on `{host}`: {error}"));
        }
    }
}

/// Releases beyond `keep` on each host, newest first, once every instance the rollout
/// `changed` runs `version`: never `version` or `previous` (what `ferry rollback` goes
/// back to), never one an instance still runs. Decided from the hosts as observed
/// under the lock, which nothing but this operation changed since.
fn to_prune(
    keep: usize,
    observed: &BTreeMap<String, HostState>,
    changed: &[(crate::plan::Step, u16)],
    version: &str,
    previous: Option<&str>,
) -> BTreeMap<String, Vec<String>> {
    let moved: BTreeSet<&str> = changed.iter().map(|(step, _)| step.id.as_str()).collect();
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
            let doomed =
                newest_first.into_iter().skip(keep).filter(|v| !kept.contains(v)).map(str::to_string).collect();
            (host.clone(), doomed)
        })
        .collect()
}

pub async fn rollback(ctx: &Ctx, opts: RollbackOptions) -> Result<(), Error> {
    let started = Instant::now();
    let fleet = Fleet::from_config(&ctx.config, &ctx.ssh)?;
    let (observed, entries) = tokio::join!(observe(&fleet), read_history(&fleet));
    let observed = observed?;
    let current = current_from(&fleet, &observed, &entries);
    let Some(target) = opts.version.clone().or_else(|| history::current(&entries).1) else {
        return Err(Error::Usage {
            message: "there is no earlier release to roll back to".into(),
            hint: Some("`ferry releases` lists what has been deployed".into()),
        });
    };
    crate::release::validate_version(&target)?;
    let available = versions_everywhere(&fleet, &observed);
    if !available.contains(&target) {
        let list = if available.is_empty() {
            "none".to_string()
        } else {
            available.iter().cloned().collect::<Vec<_>>().join(", ")
        };
        return Err(Error::Usage {
            message: format!("release {target} is no longer on every host, so it cannot be rolled back to; releases on every host: {list}"),
            hint: Some("deploy it again with `ferry deploy --version VERSION` from its source".into()),
        });
    }
    let start = ctx.config.start_command().map_or_else(|| "bin/start".to_string(), str::to_string);
    if opts.dry_run {
        return dry_run(ctx, &fleet, &target, Strategy::Rolling).await;
    }
    // Find the dump and confirm before taking the lock; restore under it, so a running
    // deploy never has its database replaced underneath it.
    let restore = if opts.restore_backup {
        Some(backup_to_restore(ctx, &fleet, current.as_ref(), opts.yes).await?)
    } else {
        None
    };
    let mut guard = lock(ctx, &fleet, "rollback", opts.lock_wait).await?;
    if let Some((host, db, backup)) = &restore {
        if let Err(error) = super::backups::restore_locked(host, db, backup).await {
            guard.release().await;
            return Err(error);
        }
    }
    let result = rollback_locked(ctx, &fleet, &mut guard, &target, current, &start, &opts, started).await;
    guard.release().await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn rollback_locked(
    ctx: &Ctx,
    fleet: &Fleet,
    guard: &mut Guard,
    target: &str,
    current: Option<String>,
    start: &str,
    opts: &RollbackOptions,
    started: Instant,
) -> Result<(), Error> {
    let observed = guard.observed().clone();
    let mut warnings = Vec::new();
    let checks = Checks::from_config(&ctx.config, &mut warnings);
    let strategy = match ctx.config.deploy.strategy {
        Strategy::Bluegreen => Strategy::Rolling,
        other => other,
    };
    let healthy = healthy_on(fleet, &observed, &checks, target).await;
    let plan = make_plan(ctx, fleet, &observed, &healthy, target, strategy);
    check_volumes(ctx, fleet, &observed, &plan)?;
    ctx.event(Event::DeployStarted {
        kind: "rollback".into(),
        app: ctx.config.app.clone(),
        version: target.to_string(),
        previous: current.clone(),
        strategy: format!("{strategy:?}").to_lowercase(),
        regions: fleet.region_names(),
    });
    let record = Record::new("rollback", target, current.clone());
    let wait = opts.wait_timeout.unwrap_or(ctx.config.deploy.wait_timeout);
    // The history says a rollback started while the first instance switches.
    let (summary, ()) = tokio::join!(
        roll_out(ctx, fleet, &observed, checks, start, wait, opts.no_revert, plan, Gates::default()),
        record_history(ctx, fleet, &record)
    );
    let done = Done { record: &record, summary: &summary, observed: &observed, kind: "rollback" };
    finish(ctx, fleet, guard, &done, current, started).await
}

fn versions_everywhere(fleet: &Fleet, observed: &BTreeMap<String, HostState>) -> BTreeSet<String> {
    let mut sets = fleet.hosts().map(|h| {
        observed
            .get(&h.name)
            .map(|s| s.releases.iter().map(|r| r.version.clone()).collect::<BTreeSet<_>>())
            .unwrap_or_default()
    });
    let first = sets.next().unwrap_or_default();
    sets.fold(first, |acc, s| acc.intersection(&s).cloned().collect())
}

/// `ferry migrate`: the release_command alone, against a release already on the
/// hosts (default: the current one), under the deploy lock.
pub async fn migrate(
    ctx: &Ctx,
    version: Option<String>,
    backup: bool,
    lock_wait: Option<Duration>,
) -> Result<(), Error> {
    let started = Instant::now();
    let Some(command) = ctx.config.deploy.release_command.clone() else {
        return Err(Error::usage("there is no `[deploy] release_command` to run"));
    };
    let fleet = Fleet::from_config(&ctx.config, &ctx.ssh)?;
    let observed = observe(&fleet).await?;
    let Some(version) = version.or(current_version(&fleet, &observed).await) else {
        return Err(Error::Usage {
            message: "no release is deployed yet".into(),
            hint: Some("`ferry migrate --version V` names one, or `ferry deploy` runs it".into()),
        });
    };
    crate::release::validate_version(&version)?;
    let primary = fleet.primary().and_then(|r| r.hosts.first()).map(|h| h.name.clone()).unwrap_or_default();
    if !observed.get(&primary).is_some_and(|s| s.has_release(&version)) {
        return Err(Error::usage(format!("release {version} is not on `{primary}`; deploy it first")));
    }
    let guard = lock(ctx, &fleet, "migrate", lock_wait).await?;
    let record = Record::new("migrate", &version, None);
    record_history(ctx, &fleet, &record).await;
    let result = if backup || ctx.config.ferry.backup.before_migrate {
        super::backups::take(ctx, &fleet, Some(version.clone()), Some(version.clone())).await.map(|_| ())
    } else {
        Ok(())
    };
    let result = match result {
        Ok(()) => release_command(ctx, &fleet, &version, &command).await,
        Err(e) => Err(e),
    };
    let status = if result.is_ok() { Status::Complete } else { Status::Failed };
    record_history(ctx, &fleet, &record.finished(status, result.as_ref().err().map(ToString::to_string))).await;
    guard.release().await;
    result?;
    ctx.event(Event::Finished {
        outcome: Outcome::Succeeded,
        version: Some(version.clone()),
        previous: None,
        message: format!("release_command for {version} succeeded"),
        duration_ms: millis(started.elapsed()),
    });
    Ok(())
}

/// Restarts every instance on its current version, behind health checks (after a
/// secrets change): the same rollout as a deploy, with nothing kept as is.
pub async fn restart(ctx: &Ctx, command: &str) -> Result<(), Error> {
    let started = Instant::now();
    let fleet = Fleet::from_config(&ctx.config, &ctx.ssh)?;
    let mut guard = lock(ctx, &fleet, command, None).await?;
    let result = async {
        let observed = guard.observed().clone();
        let Some(version) = current_version(&fleet, &observed).await else {
            ctx.event(Event::Finished {
                outcome: Outcome::Succeeded,
                version: None,
                previous: None,
                message: "no release is deployed yet; instances get the change with the first deploy".into(),
                duration_ms: millis(started.elapsed()),
            });
            return Ok(());
        };
        let mut warnings = Vec::new();
        let checks = Checks::from_config(&ctx.config, &mut warnings);
        let strategy = match ctx.config.deploy.strategy {
            Strategy::Bluegreen => Strategy::Rolling,
            other => other,
        };
        let plan = make_plan(ctx, &fleet, &observed, &BTreeSet::new(), &version, strategy);
        check_volumes(ctx, &fleet, &observed, &plan)?;
        let start = ctx.config.start_command().map_or_else(|| "bin/start".to_string(), str::to_string);
        let record = Record::new("restart", &version, Some(version.clone()));
        record_history(ctx, &fleet, &record).await;
        let summary = roll_out(
            ctx,
            &fleet,
            &observed,
            checks,
            &start,
            ctx.config.deploy.wait_timeout,
            false,
            plan,
            Gates::default(),
        )
        .await;
        let done = Done { record: &record, summary: &summary, observed: &observed, kind: "restart" };
        finish(ctx, &fleet, &mut guard, &done, Some(version), started).await
    }
    .await;
    guard.release().await;
    result
}

/// The rollout finished everywhere except in regions whose replica never caught up:
/// those stay on the old version, the others keep the new one, and the command fails.
async fn finish_behind(
    ctx: &Ctx,
    fleet: &Fleet,
    guard: &mut Guard,
    record: &Record,
    summary: &Summary,
    previous: Option<String>,
    started: Instant,
) -> Result<(), Error> {
    let version = record.version.clone();
    let skipped: BTreeSet<&str> = summary.behind.iter().map(|b| b.region.as_str()).collect();
    let what: Vec<String> = summary
        .behind
        .iter()
        .map(|b| {
            let lag = b.lag_bytes.map_or_else(|| "an unknown amount".to_string(), |l| format!("{l} bytes"));
            let why = b.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default();
            format!("region {} was not updated: replica `{}` is {lag} behind the migration{why}", b.region, b.replica)
        })
        .collect();
    let message = format!("{}; the other regions run {version}", what.join("; "));
    let failed = record.finished(Status::Failed, Some(message.clone()));
    finish_hosts(ctx, fleet, guard, &failed, |h| !skipped.contains(h.region.as_str()), &BTreeMap::new()).await;
    ctx.event(Event::Finished {
        outcome: Outcome::Failed,
        version: Some(version),
        previous,
        message: message.clone(),
        duration_ms: millis(started.elapsed()),
    });
    Err(Error::Failed {
        message,
        hint: Some("once the replica has caught up, run the same deploy again: it updates only what is left".into()),
    })
}

/// Refuses a plan that would start instances where no free volume waits for them,
/// naming the command that makes one. Nothing has changed when this fails.
pub(super) fn check_volumes(
    ctx: &Ctx,
    fleet: &Fleet,
    observed: &BTreeMap<String, HostState>,
    plan: &Plan,
) -> Result<(), Error> {
    let Some(missing) = plan.missing_volumes.first() else { return Ok(()) };
    let size =
        observed.values().flat_map(|s| s.volumes.iter()).find(|v| v.name == missing.name).map_or(1, |v| v.size_gb);
    let host =
        fleet.regions.iter().find(|r| r.name == missing.region).and_then(|r| r.hosts.first()).map(|h| h.name.clone());
    let host_flag = match (&ctx.config.ferry.target, host) {
        (crate::config::Target::Ssh, Some(h)) => format!(" --host {h}"),
        _ => String::new(),
    };
    let command = format!("ferry volumes create {} --region {} --size {size}{host_flag}", missing.name, missing.region);
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

/// The backup taken before `current` was deployed, after the user confirmed.
async fn backup_to_restore(
    ctx: &Ctx,
    fleet: &Fleet,
    current: Option<&String>,
    yes: bool,
) -> Result<(Host, crate::postgres::Database, crate::postgres::Backup), Error> {
    let host =
        fleet.primary().and_then(|r| r.hosts.first()).ok_or_else(|| Error::failed("the primary region has no host"))?;
    let backups = host.backup_list().await.map_err(|source| Error::Host { step: "listing backups", source })?;
    let Some(backup) =
        backups.into_iter().rev().find(|b| b.release_after.is_some() && b.release_after.as_ref() == current)
    else {
        return Err(Error::Usage {
            message: format!(
                "no backup was taken before {} was deployed, so there is nothing to restore",
                current.map_or("the current release", String::as_str)
            ),
            hint: Some("`ferry backups list` shows what there is; roll back without `--restore-backup`".into()),
        });
    };
    let db = super::backups::database(ctx, host).await?;
    if !yes {
        super::backups::confirm_restore(ctx, &db, &backup)?;
    }
    Ok((host.clone(), db, backup))
}
