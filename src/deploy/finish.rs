//! How an operation ends: on every host at once, in one round trip each, the outcome
//! is recorded, the release marked current (where it now runs) and old releases
//! pruned, and the lock released last. Then the outcome becomes the user's last
//! line: what ran, what failed, what was restored, where things stand.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::time::Instant;

use crate::error::Error;
use crate::fleet::Fleet;
use crate::history::{Record, Status};
use crate::host::lock::Guard;
use crate::host::{on_each, Host};
use crate::report::{Event, Outcome, Reporter};

use super::outcome::Summary;
use super::plan::{Kind, Plan};

/// What a finished rollout is checked against and reported as.
pub struct Done<'a> {
    pub plan: &'a Plan,
    pub record: &'a Record,
    pub summary: &'a Summary,
    pub started: Instant,
    /// The last line on success, when the operation says it itself.
    pub message: Option<String>,
    /// The app's name when it is a BEAM release: its peers file is brought up to date.
    pub beam: Option<String>,
}

/// Records the outcome, marks the release current and prunes on success (releasing
/// the lock in the same round trip), and turns a failure into an error that says
/// what was restored.
pub async fn finish(
    reporter: &Arc<dyn Reporter>,
    fleet: &Fleet,
    guard: &mut Guard,
    done: &Done<'_>,
) -> Result<(), Error> {
    let (plan, record, summary) = (done.plan, done.record, done.summary);
    let version = plan.version.clone();
    if summary.failure.is_none() && !summary.behind.is_empty() {
        return finish_behind(reporter, fleet, guard, done).await;
    }
    let Some(failure) = &summary.failure else {
        let complete = record.finished(Status::Complete, None);
        let marked = |_: &Host| plan.finish.mark_current;
        finish_hosts(reporter.as_ref(), fleet, guard, &complete, marked, &plan.finish.prune, done.beam.as_deref())
            .await;
        reporter.event(&Event::Finished {
            outcome: Outcome::Succeeded,
            version: Some(version.clone()),
            previous: plan.previous.clone(),
            message: done.message.clone().unwrap_or_else(|| success_message(plan)),
            duration_ms: super::millis(done.started.elapsed()),
        });
        return Ok(());
    };
    if matches!(plan.kind, Kind::Scale | Kind::RegionsAdd | Kind::RegionsRemove) {
        return finish_converge(reporter, fleet, guard, done).await;
    }
    let what = failure.describe();
    let back_to = plan.previous.clone().unwrap_or_else(|| "the previous state".into());
    let outcome = summary.outcome();
    let (status, now) = match outcome {
        Outcome::Reverted => (Status::Reverted, format!("every instance was put back on {back_to}")),
        _ if !summary.unrecovered.is_empty() => {
            (Status::Failed, format!("these instances could not be put back: {}", summary.unrecovered.join("; ")))
        }
        _ => (Status::Failed, format!("--no-revert: {} instance(s) were left on {version}", summary.changed.len())),
    };
    let failed = record.finished(status, Some(what.clone()));
    finish_hosts(reporter.as_ref(), fleet, guard, &failed, |_| false, &BTreeMap::new(), done.beam.as_deref()).await;
    reporter.event(&Event::Finished {
        outcome,
        version: Some(version.clone()),
        previous: plan.previous.clone(),
        message: now.clone(),
        duration_ms: super::millis(done.started.elapsed()),
    });
    let hint = failure.hint().unwrap_or_else(|| {
        let logs = failure
            .instance
            .as_ref()
            .map_or_else(|| "`ferry logs`".to_string(), |(_, id)| format!("`ferry logs -i {id}`"));
        format!("see the instance's last log lines above; `ferry status` shows where things stand, {logs} shows more")
    });
    Err(Error::Failed {
        message: format!("{} of {version} failed: {what}; {now}", plan.kind.as_str()),
        hint: Some(hint),
    })
}

fn success_message(plan: &Plan) -> String {
    let version = &plan.version;
    match plan.kind {
        Kind::Deploy | Kind::Rollback | Kind::Restart => format!("{version} is live everywhere"),
        Kind::Scale | Kind::RegionsAdd | Kind::RegionsRemove => {
            let regions: Vec<&str> = plan.instances.regions.iter().map(|r| r.region.as_str()).collect();
            format!("{version} runs in {}", regions.join(", "))
        }
    }
}

/// A converge whose new instance failed: the new instances were removed, and the
/// count stays recorded for the next deploy.
async fn finish_converge(
    reporter: &Arc<dyn Reporter>,
    fleet: &Fleet,
    guard: &mut Guard,
    done: &Done<'_>,
) -> Result<(), Error> {
    let Some(failure) = &done.summary.failure else { return Ok(()) };
    let message = match &failure.instance {
        Some((host, id)) => format!(
            "instance {id} in {} on `{host}` did not become healthy: {}; new instances were removed",
            failure.region, failure.cause
        ),
        None => format!("in region {}: {}; new instances were removed", failure.region, failure.cause),
    };
    let failed = done.record.finished(Status::Failed, Some(message.clone()));
    finish_hosts(reporter.as_ref(), fleet, guard, &failed, |_| false, &BTreeMap::new(), done.beam.as_deref()).await;
    reporter.event(&Event::Finished {
        outcome: done.summary.outcome(),
        version: Some(done.plan.version.clone()),
        previous: None,
        message: message.clone(),
        duration_ms: super::millis(done.started.elapsed()),
    });
    Err(Error::Failed {
        message,
        hint: Some("the count stays recorded in fly.toml; `ferry deploy` starts them once the problem is fixed".into()),
    })
}

/// The rollout finished everywhere except in regions whose replica never caught up:
/// those stay on the old version, the others keep the new one, and the command fails.
async fn finish_behind(
    reporter: &Arc<dyn Reporter>,
    fleet: &Fleet,
    guard: &mut Guard,
    done: &Done<'_>,
) -> Result<(), Error> {
    let (plan, summary) = (done.plan, done.summary);
    let version = plan.version.clone();
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
    let failed = done.record.finished(Status::Failed, Some(message.clone()));
    let marked = |h: &Host| !skipped.contains(h.region.as_str());
    finish_hosts(reporter.as_ref(), fleet, guard, &failed, marked, &BTreeMap::new(), done.beam.as_deref()).await;
    reporter.event(&Event::Finished {
        outcome: Outcome::Failed,
        version: Some(version),
        previous: plan.previous.clone(),
        message: message.clone(),
        duration_ms: super::millis(done.started.elapsed()),
    });
    Err(Error::Failed {
        message,
        hint: Some("once the replica has caught up, run the same deploy again: it updates only what is left".into()),
    })
}

/// The node names of every running instance of the app, as the instances were named
/// (see `agent::supervisor::beam_env`), sorted: what each host's peers file lists once
/// an operation is over (old instances of a rollout are gone by then, new ones not yet
/// started: the file never mixes two releases' nodes).
async fn peers(fleet: &Fleet, app: &str) -> Vec<String> {
    let observed = on_each(fleet.hosts().cloned(), |host| async move { (host.address(), host.observe().await) }).await;
    let mut peers: Vec<String> = observed
        .into_iter()
        .filter_map(|(_, (address, state))| Some((address, state.ok()?)))
        .flat_map(|(address, state)| {
            state
                .instances
                .into_iter()
                .filter(|i| i.alive)
                .map(move |i| crate::agent::beam_node(app, &i.record.id, &address))
        })
        .collect();
    peers.sort();
    peers
}

/// On every host at once, in one round trip each: records `record`, marks its
/// version current where `marked` says so, prunes what `prune` names for that host,
/// and releases the lock. A step that fails on a host is warned about: the rollout
/// itself already happened.
pub async fn finish_hosts(
    reporter: &dyn Reporter,
    fleet: &Fleet,
    guard: &mut Guard,
    record: &Record,
    marked: impl Fn(&Host) -> bool,
    prune: &BTreeMap<String, Vec<String>>,
    beam: Option<&str>,
) {
    let version = record.version.as_str();
    let peers = match beam {
        Some(app) => Some(peers(fleet, app).await),
        None => None,
    };
    let token = guard.token().to_string();
    let line = record.to_line();
    guard.stop_refreshing();
    let mark: BTreeSet<String> = fleet.hosts().filter(|h| marked(h)).map(|h| h.name.clone()).collect();
    let finished = on_each(fleet.hosts().cloned(), |host| {
        let (token, line) = (token.clone(), line.clone());
        let current = mark.contains(&host.name).then(|| version.to_string());
        let prune = prune.get(&host.name).cloned().unwrap_or_default();
        let peers = peers.clone();
        async move { host.finish(peers, Some(&token), current.as_deref(), Some(&line), &prune).await }
    })
    .await;
    // Where the script failed, the lock may still be there: `Guard::release` then
    // gives it back on every host (a no-op where it is gone).
    if finished.iter().all(|(_, result)| result.as_ref().is_ok_and(|done| done.error.is_none())) {
        guard.mark_released();
    }
    let warn = |message: String| reporter.event(&Event::Warning { message });
    for (host, result) in finished {
        let done = match result {
            Ok(done) => done,
            Err(e) => {
                let marking = if mark.contains(&host) { format!("mark {version} current, ") } else { String::new() };
                warn(format!("could not {marking}record history or release the lock on `{host}`: {e}"));
                continue;
            }
        };
        if !done.current && mark.contains(&host) {
            warn(format!("could not mark {version} current on `{host}`"));
        }
        if !done.history {
            warn(format!("could not record history on `{host}`"));
        }
        for wanted in prune.get(&host).into_iter().flatten() {
            if done.pruned.contains(wanted) {
                reporter.event(&Event::Pruned { host: host.clone(), version: wanted.clone() });
            } else {
                warn(format!("could not prune {wanted} on `{host}`"));
            }
        }
        if let Some(error) = done.error {
            warn(format!("finishing on `{host}`: {error}"));
        }
    }
}

/// Appends one history line on every host; a host that cannot be written is warned
/// about, since the operation itself already happened.
pub async fn record_history(reporter: &dyn Reporter, fleet: &Fleet, record: &Record) {
    let line = record.to_line();
    let appended = on_each(fleet.hosts().cloned(), |host| {
        let line = line.clone();
        async move { crate::host::bookkeeping(&host.name, "recording history", host.append_history(&line)).await }
    })
    .await;
    for (name, result) in appended {
        if let Err(e) = result {
            reporter.event(&Event::Warning { message: format!("could not record history on `{name}`: {e}") });
        }
    }
}
