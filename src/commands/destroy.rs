//! `ferry destroy --yes`: stop every instance and remove the app from every host.

use crate::config::Target;
use crate::deploy::lock;
use crate::error::Error;
use crate::fleet::local_root;
use crate::host::Stop;
use crate::report::Event;

use super::Ctx;

pub async fn run(ctx: &Ctx, yes: bool) -> Result<(), Error> {
    if !yes {
        let what = format!(
            "`ferry destroy` stops every instance of `{}` and deletes its releases, history and volumes",
            ctx.settings.app
        );
        if !ctx.interactive {
            return Err(Error::Usage {
                message: what,
                hint: Some("run it again with `--yes` if that is what you want".into()),
            });
        }
        ctx.confirm(&format!("{what}; go ahead?"))?;
    }
    let fleet = ctx.fleet()?;
    let guard = lock::take(&fleet, ctx.reporter.as_ref(), "destroy", ctx.settings.lock_wait).await?;
    let observed = guard.observed().clone();
    let stop = Stop { signal: ctx.settings.instance.kill_signal.clone(), timeout: ctx.settings.instance.kill_timeout };
    let stopped = async {
        for host in fleet.hosts() {
            for instance in observed.get(&host.name).map(|s| s.instances.clone()).unwrap_or_default() {
                host.stop_instance(&instance.record.id, &stop)
                    .await
                    .map_err(|source| Error::Host { step: "stopping instances", source })?;
                ctx.event(Event::InstanceStopped {
                    region: host.region.clone(),
                    host: host.name.clone(),
                    instance: instance.record.id.clone(),
                });
            }
        }
        Ok::<(), Error>(())
    }
    .await;
    guard.release().await;
    stopped?;
    for host in fleet.hosts() {
        host.destroy().await.map_err(|source| Error::Host { step: "removing the app", source })?;
    }
    if ctx.settings.target == Target::Local {
        remove_empty_dirs(&local_root(&ctx.settings.dir));
    }
    ctx.finished(format!("destroyed `{}`", ctx.settings.app));
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
