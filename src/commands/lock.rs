//! `ferry lock status` and `ferry lock release`.

use crate::error::Error;
use crate::fleet::Fleet;

use super::{observe, Ctx};

pub async fn status(ctx: &Ctx) -> Result<(), Error> {
    let fleet = Fleet::from_config(&ctx.config, &ctx.ssh)?;
    let observed = observe(&fleet).await?;
    let mut rows = Vec::new();
    for host in fleet.hosts() {
        let lock = observed.get(&host.name).and_then(|s| s.lock.clone());
        rows.push(serde_json::json!({
            "host": host.name,
            "locked": lock.is_some(),
            "holder": lock.as_ref().and_then(|l| l.holder.clone()),
            "age_secs": lock.as_ref().map(|l| l.age_secs),
            "stale": lock.as_ref().and_then(crate::host::lock::Held::stale_reason),
        }));
        if !ctx.json {
            match &lock {
                None => println!("{}: unlocked", host.name),
                Some(held) => {
                    let stale = held.stale_reason().map(|r| format!(" (stale: {r})")).unwrap_or_default();
                    println!("{}: locked by {}, refreshed {}s ago{stale}", host.name, held.describe(), held.age_secs);
                }
            }
        }
    }
    if ctx.json {
        println!("{}", serde_json::Value::Array(rows));
    }
    Ok(())
}

pub async fn release(ctx: &Ctx) -> Result<(), Error> {
    let fleet = Fleet::from_config(&ctx.config, &ctx.ssh)?;
    let observed = observe(&fleet).await?;
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
