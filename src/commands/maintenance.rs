//! `ferry maintenance on|off`: every front door of the app answers each HTTP request
//! with a 503 maintenance page (with `Retry-After`), or routes again. Instances keep
//! running and being checked; a request with a `Ferry-Preview` header still reaches
//! them. The state is kept on each host, across agent restarts.

use crate::error::Error;

use super::Ctx;

/// What the page says unless `--message` is given.
pub const DEFAULT_MESSAGE: &str = "This service is down for maintenance. Please try again in a few minutes.";

pub async fn run(ctx: &Ctx, message: Option<String>) -> Result<(), Error> {
    if !ctx.settings.proxy.serves(ctx.settings.target) {
        return Err(Error::Usage {
            message: "this app has no front door to put in maintenance".into(),
            hint: Some(
                "a front door serves `[http_service]` or `[[services]]` unless `[ferry.proxy] enabled = false`".into(),
            ),
        });
    }
    let fleet = ctx.fleet()?;
    let on = message.is_some();
    let results = crate::host::on_each(fleet.hosts().cloned(), |host| {
        let message = message.clone();
        async move { host.maintenance(message).await }
    })
    .await;
    let mut done = Vec::new();
    let mut failed = None;
    for (host, result) in results {
        match result {
            Ok(()) => done.push(host),
            Err(source) => {
                failed.get_or_insert(Error::Host { step: "switching maintenance", source });
            }
        }
    }
    if let Some(error) = failed {
        if !done.is_empty() {
            ctx.warn(format!(
                "maintenance is {} on {} only; run the command again once every host answers",
                if on { "on" } else { "off" },
                done.join(", ")
            ));
        }
        return Err(error);
    }
    ctx.finished(if on {
        "maintenance on: every front door answers 503 with the maintenance page; `ferry maintenance off` ends it"
    } else {
        "maintenance off: the front doors route to the instances again"
    });
    Ok(())
}
