//! `ferry deploy`, `ferry rollback` and `ferry migrate`: what each asks of the engine.

use std::path::PathBuf;

use crate::deploy::observe::{self, read_history};
use crate::deploy::{lock, migrate, Operation, Release, Restore};
use crate::error::Error;
use crate::fleet::Fleet;
use crate::history::{self, Record, Status};
use crate::release::{self, Artifact, BuildSpec};
use crate::report::{Event, Outcome};
use crate::settings::DEFAULT_START;

use super::Ctx;

pub struct DeployOptions {
    pub version: Option<String>,
    pub release: Option<PathBuf>,
    pub dry_run: bool,
}

pub async fn deploy(ctx: &Ctx, opts: DeployOptions) -> Result<(), Error> {
    ctx.settings.rollout.refuse_unsupported()?;
    let fleet = ctx.fleet()?;
    if opts.dry_run {
        let version = match &opts.release {
            Some(path) => release::take(path, &ctx.settings.app).await?.version,
            None => release::resolve_version(opts.version.as_deref(), &ctx.settings.dir)?,
        };
        let op = Operation::Deploy(Release { version, artifact: None, start: ctx.settings.instance.start_command() });
        return dry_run(ctx, &fleet, &op).await;
    }
    // The lock comes first: a deploy that cannot have it builds nothing (a build writes
    // `.ferry/build/`, which the holder may be shipping from). A `--release` file is
    // only read: it is checked while connecting, and one that fails its checks leaves
    // the hosts untouched.
    let take = lock::take(&fleet, ctx.reporter.as_ref(), "deploy", ctx.settings.lock_wait);
    let (artifact, guard) = if opts.release.is_some() {
        let hosts: Vec<crate::host::Host> = fleet.hosts().cloned().collect();
        let (artifact, connected) = tokio::join!(artifact(ctx, &opts), lock::connect_all(&hosts));
        let artifact = artifact?;
        connected?;
        (Ok(artifact), take.await?)
    } else {
        // What can be refused without building is refused before the lock is taken.
        let version = release::resolve_version(opts.version.as_deref(), &ctx.settings.dir)?;
        let no_start = ctx.settings.instance.start.is_none() && ctx.settings.build.command.is_none();
        if no_start && !ctx.settings.build.path.join(DEFAULT_START).is_file() {
            return Err(no_start_command(ctx));
        }
        let guard = take.await?;
        let opts = DeployOptions { version: Some(version), release: None, dry_run: false };
        (artifact(ctx, &opts).await, guard)
    };
    let prepared = artifact.and_then(|artifact| Ok((start_command(ctx, &artifact)?, artifact)));
    let (start, artifact) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            guard.release().await;
            return Err(e);
        }
    };
    let version = artifact.version.clone();
    ctx.engine(&fleet).run_with(Operation::Deploy(Release { version, artifact: Some(artifact), start }), guard).await
}

/// The release to ship: built from the tree, or the `--release` file checked.
async fn artifact(ctx: &Ctx, opts: &DeployOptions) -> Result<Artifact, Error> {
    if let Some(path) = &opts.release {
        return Ok(release::take(path, &ctx.settings.app).await?);
    }
    let spec = BuildSpec {
        app: ctx.settings.app.clone(),
        dir: ctx.settings.dir.clone(),
        command: ctx.settings.build.command.clone(),
        path: ctx.settings.build.path.clone(),
        output: ctx.settings.build_dir(),
    };
    let artifact = release::build(spec, opts.version.clone()).await?;
    ctx.event(Event::Built {
        path: artifact.path.display().to_string(),
        sha256: artifact.sha256.clone(),
        size: artifact.size,
        version: artifact.version.clone(),
    });
    Ok(artifact)
}

/// The command that runs one instance: the configured one, or an executable
/// `bin/start` shipped in the release.
fn start_command(ctx: &Ctx, artifact: &Artifact) -> Result<String, Error> {
    // Another process group without a command of its own runs `bin/start` too.
    let bare = ctx.settings.groups.iter().find(|g| g.instance.start.is_none() && g.name != ctx.settings.default_group);
    if let (Some(group), false) = (bare, artifact.has_file(DEFAULT_START)) {
        return Err(Error::Usage {
            message: format!(
                "process group `{}` has no command in `[processes]`, and the release ships no executable `{DEFAULT_START}`",
                group.name
            ),
            hint: Some(format!("give it one: `[processes]` `{} = \"bin/hello worker\"`", group.name)),
        });
    }
    match &ctx.settings.instance.start {
        Some(start) => Ok(start.clone()),
        None if artifact.has_file(DEFAULT_START) => Ok(DEFAULT_START.to_string()),
        None => Err(no_start_command(ctx)),
    }
}

fn no_start_command(ctx: &Ctx) -> Error {
    Error::Usage {
        message: format!("no start command for `{}`: set `[ferry.build] start`, or `[processes] app`, or ship an executable `bin/start` in the release", ctx.settings.app),
        hint: Some("for example: `[ferry.build]` `start = \"bin/hello start\"` (it must run one instance in the foreground and listen on $PORT)".into()),
    }
}

async fn dry_run(ctx: &Ctx, fleet: &Fleet, op: &Operation) -> Result<(), Error> {
    let engine = ctx.engine(fleet);
    let Some(plan) = engine.preview(op).await? else { return Ok(()) };
    engine.report_plan(&plan);
    let message = if plan.is_noop() {
        format!("dry run: {} already runs everywhere; nothing to do", plan.version)
    } else {
        "dry run: nothing was changed".into()
    };
    ctx.event(Event::Finished {
        outcome: Outcome::Succeeded,
        version: Some(plan.version.clone()),
        previous: plan.previous.clone(),
        message,
        duration_ms: 0,
    });
    Ok(())
}

pub struct RollbackOptions {
    pub version: Option<String>,
    pub dry_run: bool,
    pub restore_backup: bool,
    pub yes: bool,
    /// Roll back to a release that never completed a deploy.
    pub force: bool,
}

pub async fn rollback(ctx: &Ctx, opts: RollbackOptions) -> Result<(), Error> {
    let fleet = ctx.fleet()?;
    let (observed, entries) = tokio::join!(observe::observe(&fleet), read_history(&fleet));
    let observed = observed?;
    let current = observe::current_from(&fleet, &observed, &entries);
    let Some(target) = opts.version.clone().or_else(|| history::current(&entries).1) else {
        return Err(Error::Usage {
            message: "there is no earlier release to roll back to".into(),
            hint: Some("`ferry releases` lists what has been deployed".into()),
        });
    };
    release::validate_version(&target)?;
    let available = observe::versions_everywhere(&fleet, &observed);
    // Newest first, as the history has them; those that never completed are marked.
    let list = || {
        let listed: Vec<String> = history::by_recency(&entries)
            .into_iter()
            .filter(|v| available.contains(v))
            .chain(available.iter().filter(|v| !entries.iter().any(|e| &e.version == *v)).cloned())
            .map(|v| if history::completed(&entries, &v) { v } else { format!("{v} (never completed)") })
            .collect();
        if listed.is_empty() {
            "none".to_string()
        } else {
            listed.join(", ")
        }
    };
    if !available.contains(&target) {
        let message = if entries.iter().any(|e| e.version == target) {
            format!("release {target} is no longer on every host, so it cannot be rolled back to; releases on every host, newest first: {}", list())
        } else {
            format!("release {target} was never deployed; releases on every host, newest first: {}", list())
        };
        return Err(Error::Usage {
            message,
            hint: Some("deploy it again with `ferry deploy --version VERSION` from its source".into()),
        });
    }
    if !opts.force && entries.iter().any(|e| e.version == target) && !history::completed(&entries, &target) {
        let how = entries
            .iter()
            .rev()
            .find(|e| e.version == target && (e.kind == "deploy" || e.kind == "rollback"))
            .map_or("failed", |e| e.status.as_str());
        return Err(Error::Usage {
            message: format!(
                "release {target} never completed a deploy (its last one {}); rolling back to it would bring back what failed",
                if how == "interrupted" { "was interrupted".to_string() } else { format!("was {how}") }
            ),
            hint: Some(format!(
                "`ferry releases` shows what happened; `ferry rollback {target} --force` rolls back to it anyway"
            )),
        });
    }
    // Find the dump and confirm before taking the lock; it is restored under it, so
    // a running deploy never has its database replaced underneath it.
    let restore =
        if opts.restore_backup { Some(backup_to_restore(ctx, &fleet, current.as_ref()).await?) } else { None };
    let op = Operation::Rollback { target, current, restore };
    if opts.dry_run {
        return dry_run(ctx, &fleet, &op).await;
    }
    if let Operation::Rollback { restore: Some(restore), .. } = &op {
        if !opts.yes {
            ctx.confirm_restore(&restore.db, &restore.backup)?;
        }
    }
    ctx.engine(&fleet).run(op).await
}

/// The backup taken before `current` was deployed.
async fn backup_to_restore(ctx: &Ctx, fleet: &Fleet, current: Option<&String>) -> Result<Box<Restore>, Error> {
    let host = migrate::release_host(fleet)?;
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
    let db = migrate::database(&ctx.settings, host).await?;
    Ok(Box::new(Restore { host: host.clone(), db, backup }))
}

/// `ferry migrate`: the release_command alone, against a release already on the
/// hosts (default: the current one), under the deploy lock.
pub async fn migrate(ctx: &Ctx, version: Option<String>) -> Result<(), Error> {
    let started = tokio::time::Instant::now();
    let Some(command) = ctx.settings.migration.command.clone() else {
        return Err(Error::usage("there is no `[deploy] release_command` to run"));
    };
    let fleet = ctx.fleet()?;
    let observed = observe::observe(&fleet).await?;
    let Some(version) = version.or(observe::current_version(&fleet, &observed).await) else {
        return Err(Error::Usage {
            message: "no release is deployed yet".into(),
            hint: Some("`ferry migrate --version V` names one, or `ferry deploy` runs it".into()),
        });
    };
    release::validate_version(&version)?;
    let primary = migrate::release_host(&fleet)?;
    if !observed.get(&primary.name).is_some_and(|s| s.has_release(&version)) {
        return Err(Error::usage(format!("release {version} is not on `{}`; deploy it first", primary.name)));
    }
    let guard = lock::take(&fleet, ctx.reporter.as_ref(), "migrate", ctx.settings.lock_wait).await?;
    let record = Record::new("migrate", &version, None);
    crate::deploy::finish::record_history(ctx.reporter.as_ref(), &fleet, &record).await;
    let result = async {
        if ctx.settings.migration.backup_first {
            let (before, after) = (Some(version.clone()), Some(version.clone()));
            migrate::backup(&ctx.settings, ctx.reporter.as_ref(), &fleet, before, after).await?;
        }
        migrate::release_command(&ctx.settings, &ctx.reporter, &fleet, &version, &command).await
    }
    .await;
    let status = if result.is_ok() { Status::Complete } else { Status::Failed };
    let finished = record.finished(status, result.as_ref().err().map(ToString::to_string));
    crate::deploy::finish::record_history(ctx.reporter.as_ref(), &fleet, &finished).await;
    guard.release().await;
    result?;
    ctx.event(Event::Finished {
        outcome: Outcome::Succeeded,
        version: Some(version.clone()),
        previous: None,
        message: format!("release_command for {version} succeeded"),
        duration_ms: crate::deploy::millis(started.elapsed()),
    });
    Ok(())
}
