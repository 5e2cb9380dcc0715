//! `ferry lock status` and `ferry lock release`.

use crate::deploy::observe;
use crate::error::Error;
use crate::report::views::{LockRow, Locks};

use super::Ctx;

pub async fn status(ctx: &Ctx) -> Result<(), Error> {
    let fleet = ctx.fleet()?;
    let observed = observe::observe(&fleet).await?;
    let rows = fleet
        .hosts()
        .map(|host| LockRow::new(host.name.clone(), observed.get(&host.name).and_then(|s| s.lock.clone())))
        .collect();
    ctx.show(&Locks(rows));
    Ok(())
}

pub async fn release(ctx: &Ctx) -> Result<(), Error> {
    let fleet = ctx.fleet()?;
    let observed = observe::observe(&fleet).await?;
    for host in fleet.hosts() {
        let Some(held) = observed.get(&host.name).and_then(|s| s.lock.clone()) else { continue };
        host.lock_release(None).await.map_err(|source| Error::Unreachable {
            host: host.name.clone(),
            step: "releasing the lock",
            source,
        })?;
        ctx.warn(format!("released the lock on `{}` held by {}", host.name, held.describe()));
    }
    Ok(())
}
