//! `ferry backups create|list|restore`: the same `pg_dump` a deploy takes before its
//! release_command (on the release machine, verified with `pg_restore --list`, kept
//! to `[ferry.backup] keep`), taken or restored on demand under the deploy lock.

use crate::deploy::{lock, migrate, observe};
use crate::error::Error;
use crate::report::views::Backups;

use super::Ctx;

pub async fn create(ctx: &Ctx) -> Result<(), Error> {
    let fleet = ctx.fleet()?;
    let observed = observe::observe(&fleet).await?;
    let current = observe::current_on_hosts(&fleet, &observed);
    let guard = lock::take(&fleet, ctx.reporter.as_ref(), "backups create", ctx.settings.lock_wait).await?;
    let result = migrate::backup(&ctx.settings, ctx.reporter.as_ref(), &fleet, current.clone(), current).await;
    guard.release().await;
    let backup = result?;
    ctx.finished(format!("backup {} of {} ({} bytes)", backup.id, backup.database, backup.size));
    Ok(())
}

pub async fn list(ctx: &Ctx) -> Result<(), Error> {
    let fleet = ctx.fleet()?;
    let host = migrate::release_host(&fleet)?;
    let mut backups = host.backup_list().await.map_err(|source| Error::Host { step: "listing backups", source })?;
    backups.reverse();
    ctx.show(&Backups(backups));
    Ok(())
}

pub async fn restore(ctx: &Ctx, id: &str, yes: bool) -> Result<(), Error> {
    let fleet = ctx.fleet()?;
    let host = migrate::release_host(&fleet)?;
    let backups = host.backup_list().await.map_err(|source| Error::Host { step: "listing backups", source })?;
    let Some(backup) = backups.into_iter().find(|b| b.id == id) else {
        return Err(Error::Usage {
            message: format!("no backup `{id}`"),
            hint: Some("`ferry backups list` shows them".into()),
        });
    };
    let db = migrate::database(&ctx.settings, host).await?;
    if !yes {
        ctx.confirm_restore(&db, &backup)?;
    }
    let guard = lock::take(&fleet, ctx.reporter.as_ref(), "backups restore", ctx.settings.lock_wait).await?;
    let result = migrate::restore(host, &db, &backup).await;
    guard.release().await;
    result?;
    ctx.finished(format!("restored backup {} into {}", backup.id, backup.database));
    Ok(())
}
