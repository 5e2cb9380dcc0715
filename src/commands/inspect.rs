//! Read-only commands: `ferry status`, `ferry releases`, `ferry logs`. Each gathers
//! data and hands it to the reporter as a view.

use crate::deploy::observe::{self, read_history};
use crate::error::Error;
use crate::host::now_ms;
use crate::report::views::{FrontDoorRow, InstanceRow, LogLine, Logs, Releases, Status};

use super::Ctx;

pub async fn status(ctx: &Ctx) -> Result<(), Error> {
    let fleet = ctx.fleet()?;
    let observed = observe::observe(&fleet).await?;
    let mut rows = Vec::new();
    let mut front_doors = Vec::new();
    let mut maintenance = None;
    for host in fleet.hosts() {
        let Some(state) = observed.get(&host.name) else { continue };
        if maintenance.is_none() {
            maintenance.clone_from(&state.maintenance);
        }
        let (routing, has_table) = (!state.doors.is_empty(), state.routes);
        for door in &state.doors {
            // A door on every address is reached at the host's.
            let address = match door.strip_prefix("0.0.0.0:").or_else(|| door.strip_prefix("[::]:")) {
                Some(port) => format!("{}:{port}", host.address()),
                None => door.clone(),
            };
            front_doors.push(FrontDoorRow { region: host.region.clone(), address });
        }
        for instance in &state.instances {
            let record = &instance.record;
            let runtime = &instance.runtime;
            // The host's agent checks its instances all the time: its last result.
            let health = match (&runtime.health, instance.alive) {
                (_, false) => "-",
                (Some(h), true) if h.passing => "passing",
                (Some(_), true) => "failing",
                (None, true) => "starting",
            };
            let state = match runtime.state.as_str() {
                "" if instance.alive => "running".to_string(),
                "" => "stopped".to_string(),
                other => other.to_string(),
            };
            let since = runtime.up_since.unwrap_or(record.started_at);
            rows.push(InstanceRow {
                region: record.region.clone(),
                host: host.name.clone(),
                id: record.id.clone(),
                version: record.version.clone(),
                state,
                health,
                health_detail: runtime.health.as_ref().and_then(|h| h.detail.clone()),
                checked_at: runtime.health.as_ref().map(|h| h.at),
                port: record.port,
                pid: instance.alive.then_some(record.pid),
                uptime_secs: instance.alive.then(|| now_ms().saturating_sub(since) / 1000),
                restarts: runtime.restarts,
                last_exit: runtime.last_exit.clone(),
                traffic: routing && instance.alive && (instance.routed || !has_table) && health == "passing",
            });
        }
    }
    let current_version = observe::current_on_hosts(&fleet, &observed);
    let no_boot: Vec<&str> =
        observed.iter().filter(|(_, s)| s.boot.as_deref() == Some("none")).map(|(h, _)| h.as_str()).collect();
    let boot_warning = (!no_boot.is_empty()).then(|| {
        format!(
            "instances on {} will not come back after a reboot: neither `systemctl --user` nor `crontab` works there",
            no_boot.join(", ")
        )
    });
    ctx.show(&Status {
        app: ctx.settings.app.clone(),
        current_version,
        front_doors,
        maintenance,
        instances: rows,
        boot_warning,
    });
    Ok(())
}

pub async fn releases(ctx: &Ctx) -> Result<(), Error> {
    let fleet = ctx.fleet()?;
    let mut entries = read_history(&fleet).await;
    entries.reverse();
    ctx.show(&Releases(entries));
    Ok(())
}

pub async fn logs(ctx: &Ctx, region: Option<String>, instance: Option<String>, lines: usize) -> Result<(), Error> {
    let fleet = ctx.fleet()?;
    if let Some(region) = &region {
        if !fleet.regions.iter().any(|r| &r.name == region) {
            return Err(Error::usage(format!(
                "no region `{region}` in the config (regions: {})",
                fleet.region_names().join(", ")
            )));
        }
    }
    let observed = observe::observe(&fleet).await?;
    let mut found = false;
    let mut shown = Vec::new();
    for host in fleet.hosts() {
        let Some(state) = observed.get(&host.name) else { continue };
        for inst in &state.instances {
            let r = &inst.record;
            if region.as_ref().is_some_and(|want| want != &r.region)
                || instance.as_ref().is_some_and(|want| !r.id.starts_with(want.as_str()))
            {
                continue;
            }
            found = true;
            let tail = host
                .log_tail(&r.id, lines, false)
                .await
                .map_err(|source| Error::Host { step: "reading logs", source })?;
            shown.extend(tail.into_iter().map(|line| LogLine {
                region: r.region.clone(),
                instance: r.id.clone(),
                line,
            }));
        }
    }
    if !found {
        if let Some(id) = instance {
            return Err(Error::usage(format!("no instance `{id}`; `ferry status` lists them")));
        }
    }
    ctx.show(&Logs(shown));
    Ok(())
}
