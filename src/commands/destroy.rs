//! `ferry destroy --yes`: stop every instance and remove the app from every host.

use crate::error::Error;
use crate::fleet::{local_root, Fleet};
use crate::report::Event;

use super::{lock, observe, Ctx};

pub async fn run(ctx: &Ctx, yes: bool) -> Result<(), Error> {
    if !yes {
        return Err(Error::Usage {
            message: format!(
                "`ferry destroy` stops every instance of `{}` and deletes its releases, history and volumes",
                ctx.config.app
            ),
            hint: Some("run it again with `--yes` if that is what you want".into()),
        });
    }
    let fleet = Fleet::from_config(&ctx.config, &ctx.ssh)?;
    let guard = lock(ctx, &fleet, "destroy", None).await?;
    let observed = observe(&fleet).await?;
    for host in fleet.hosts() {
        for instance in observed.get(&host.name).map(|s| s.instances.clone()).unwrap_or_default() {
            host.stop_instance(&instance.record.id, &ctx.config.kill_signal, ctx.config.kill_timeout)
                .await
                .map_err(|source| Error::Host { step: "stopping instances", source })?;
            ctx.event(Event::InstanceStopped {
                region: host.region.clone(),
                host: host.name.clone(),
                instance: instance.record.id.clone(),
            });
        }
    }
    guard.release().await;
    for host in fleet.hosts() {
        host.destroy().await.map_err(|source| Error::Host { step: "removing the app", source })?;
    }
    if matches!(ctx.config.ferry.target, crate::config::Target::Local) {
        remove_empty_dirs(&local_root(&ctx.config.dir));
    }
    if !ctx.json {
        eprintln!("destroyed `{}`", ctx.config.app);
    }
    Ok(())
}

/// Removes directories left empty under the local target's root, deepest first.
fn remove_empty_dirs(dir: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
