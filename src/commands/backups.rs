//! `ferry backups create|list|restore` and the backup a deploy or migrate takes before
//! the release_command: `pg_dump -Fc` on the release machine, verified with
//! `pg_restore --list`, kept to `[ferry.backup] keep`.

use std::fmt::Write as _;

use crate::config::BackupRun;
use crate::error::Error;
use crate::fleet::Fleet;
use crate::host::{Host, HostError};
use crate::postgres::{Backup, Database};
use crate::report::{Event, Outcome};
use crate::transport::{LocalTransport, Transport};

use super::{confirm, lock, observe, Ctx};

/// The release machine: the primary region's first host.
fn release_host(fleet: &Fleet) -> Result<&Host, Error> {
    fleet.primary().and_then(|r| r.hosts.first()).ok_or_else(|| Error::failed("the primary region has no host"))
}

/// The value of `var` as the app sees it: `[env]`, else the app's secrets.
pub async fn url_from(ctx: &Ctx, host: &Host, var: &str) -> Result<String, Error> {
    if let Some(url) = ctx.config.env.get(var) {
        return Ok(url.clone());
    }
    host.secret_get(var).await.map_err(|source| Error::Host { step: "reading a database URL", source })?.ok_or_else(
        || Error::Usage {
            message: format!("no `{var}` in `[env]` or in the app's secrets"),
            hint: Some(format!("`ferry secrets set {var}=-` and paste the URL")),
        },
    )
}

/// The database named by `[ferry.backup] database_url_env`, from `[env]` or secrets.
pub async fn database(ctx: &Ctx, host: &Host) -> Result<Database, Error> {
    let var = ctx.config.ferry.backup.database_url_env.clone();
    let url = url_from(ctx, host, &var).await?;
    Database::from_url(&var, &url).map_err(|e| Error::Usage { message: e.to_string(), hint: None })
}

/// Takes one backup on the release machine. An error here means nothing was migrated.
pub async fn take(ctx: &Ctx, fleet: &Fleet, before: Option<String>, after: Option<String>) -> Result<Backup, Error> {
    let host = release_host(fleet)?;
    let db = database(ctx, host).await?;
    let now = std::time::SystemTime::now();
    // Millisecond timestamps, so ids sort in the order the backups were taken.
    let stamp: String =
        humantime::format_rfc3339_millis(now).to_string().chars().filter(char::is_ascii_alphanumeric).collect();
    let meta = Backup {
        app: ctx.config.app.clone(),
        id: format!("{stamp}-{}", &super::new_instance_id()[..6]),
        created_at: humantime::format_rfc3339_seconds(now).to_string(),
        database: db.describe(),
        release_before: before,
        release_after: after,
        size: 0,
        sha256: String::new(),
    };
    ctx.event(Event::BackupStarted { host: host.name.clone(), database: db.describe() });
    let keep = ctx.config.ferry.backup.keep;
    let taken = match ctx.config.ferry.backup.run {
        BackupRun::Host => host.backup_create(&db, &meta, keep).await,
        BackupRun::Local => take_here(ctx, host, &db, &meta, keep).await,
    };
    let backup = taken.map_err(|source| Error::Failed {
        message: format!("the backup of `{}` failed: {}", db.describe(), crate::error::chain(&source)),
        hint: Some("nothing was migrated and no instance changed; fix the database URL or access and run again".into()),
    })?;
    ctx.event(Event::BackupTaken {
        host: host.name.clone(),
        id: backup.id.clone(),
        database: backup.database.clone(),
        size: backup.size,
        sha256: backup.sha256.clone(),
    });
    Ok(backup)
}

/// `[ferry.backup] run = "local"`: pg_dump on this machine (the same script, through
/// the local transport), then the verified dump goes to the release machine's
/// `backups/` like any other.
async fn take_here(ctx: &Ctx, host: &Host, db: &Database, meta: &Backup, keep: usize) -> Result<Backup, HostError> {
    let staging_root = ctx.config.dir.join(".ferry").join("backups-staging");
    let staging = staging_root.join(&ctx.config.app);
    let here = Host {
        name: "this machine".into(),
        region: String::new(),
        transport: Transport::Local(LocalTransport::new("this machine")),
        app_dir: staging.display().to_string(),
    };
    let backup = here.backup_create(db, meta, 1).await?;
    let dump = staging.join("backups").join(format!("{}.dump", backup.id));
    let sent = host.transport.upload(&dump, &format!("{}/backups/{}.dump", host.app_dir, backup.id), &|_| {}).await;
    let _ = std::fs::remove_dir_all(&staging_root);
    sent?;
    host.backup_register(&backup, keep).await?;
    Ok(backup)
}

pub async fn create(ctx: &Ctx) -> Result<(), Error> {
    let fleet = Fleet::from_config(&ctx.config, &ctx.ssh)?;
    let observed = observe(&fleet).await?;
    let current = fleet.hosts().find_map(|h| observed.get(&h.name).and_then(|s| s.current.clone()));
    let guard = lock(ctx, &fleet, "backups create", None).await?;
    let result = take(ctx, &fleet, current.clone(), current).await;
    guard.release().await;
    let backup = result?;
    ctx.event(Event::Finished {
        outcome: Outcome::Succeeded,
        version: None,
        previous: None,
        message: format!("backup {} of {} ({} bytes)", backup.id, backup.database, backup.size),
        duration_ms: 0,
    });
    Ok(())
}

pub async fn list(ctx: &Ctx) -> Result<(), Error> {
    let fleet = Fleet::from_config(&ctx.config, &ctx.ssh)?;
    let host = release_host(&fleet)?;
    let mut backups = host.backup_list().await.map_err(|source| Error::Host { step: "listing backups", source })?;
    backups.reverse();
    if ctx.json {
        println!("{}", serde_json::to_string(&backups).unwrap_or_default());
        return Ok(());
    }
    if backups.is_empty() {
        println!("no backups; `ferry backups create` takes one");
        return Ok(());
    }
    let mut out =
        format!("{:<28} {:<21} {:<28} {:>10} {:<12} {}\n", "ID", "CREATED", "DATABASE", "SIZE", "BEFORE", "AFTER");
    for b in &backups {
        let _ = writeln!(
            out,
            "{:<28} {:<21} {:<28} {:>10} {:<12} {}",
            b.id,
            b.created_at,
            b.database,
            b.size,
            b.release_before.as_deref().unwrap_or("-"),
            b.release_after.as_deref().unwrap_or("-")
        );
    }
    print!("{out}");
    Ok(())
}

pub async fn restore(ctx: &Ctx, id: &str, yes: bool) -> Result<(), Error> {
    let fleet = Fleet::from_config(&ctx.config, &ctx.ssh)?;
    let host = release_host(&fleet)?;
    let backups = host.backup_list().await.map_err(|source| Error::Host { step: "listing backups", source })?;
    let Some(backup) = backups.into_iter().find(|b| b.id == id) else {
        return Err(Error::Usage {
            message: format!("no backup `{id}`"),
            hint: Some("`ferry backups list` shows them".into()),
        });
    };
    restore_backup(ctx, &fleet, &backup, yes).await?;
    ctx.event(Event::Finished {
        outcome: Outcome::Succeeded,
        version: None,
        previous: None,
        message: format!("restored backup {} into {}", backup.id, backup.database),
        duration_ms: 0,
    });
    Ok(())
}

/// Asks before a restore replaces the database's contents.
pub fn confirm_restore(ctx: &Ctx, db: &Database, backup: &Backup) -> Result<(), Error> {
    let question =
        format!("replace the contents of `{}` with backup {} from {}?", db.describe(), backup.id, backup.created_at);
    confirm(ctx, &question)
}

/// Restores `backup` over the current database, after confirmation.
pub async fn restore_backup(ctx: &Ctx, fleet: &Fleet, backup: &Backup, yes: bool) -> Result<(), Error> {
    let host = release_host(fleet)?;
    let db = database(ctx, host).await?;
    if !yes {
        confirm_restore(ctx, &db, backup)?;
    }
    let guard = lock(ctx, fleet, "backups restore", None).await?;
    let result = restore_locked(host, &db, backup).await;
    guard.release().await;
    result
}

/// Restores `backup` into `db`; the caller holds the lock.
pub async fn restore_locked(host: &Host, db: &Database, backup: &Backup) -> Result<(), Error> {
    host.backup_restore(db, backup).await.map_err(|source| Error::Failed {
        message: format!("restoring backup {} failed: {}", backup.id, crate::error::chain(&source)),
        hint: Some("pg_restore ran in one transaction, so the database is as it was before".into()),
    })
}
