//! Read-only commands: `ferry status`, `ferry releases`, `ferry logs`. Each gathers
//! data and hands it to the reporter as a view.

use std::collections::BTreeMap;

use crate::deploy::observe::{self, read_history};
use crate::error::Error;
use crate::host::now_ms;
use crate::report::views::{FrontDoorRow, InstanceRow, LogLine, Logs, Releases, Status};

use super::Ctx;

/// How often `status --watch` looks again.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn status(ctx: &Ctx, watch: bool) -> Result<(), Error> {
    if !watch {
        return status_once(ctx).await;
    }
    let terminal = console::Term::stdout();
    // One listener for the whole run: a Ctrl-C while a host is asked is not lost.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let once = async {
            if terminal.is_term() {
                let _ = terminal.clear_screen();
            }
            status_once(ctx).await?;
            tokio::time::sleep(WATCH_EVERY).await;
            Ok::<(), Error>(())
        };
        tokio::select! {
            done = once => done?,
            _ = &mut interrupted => return Ok(()),
        }
    }
}

async fn status_once(ctx: &Ctx) -> Result<(), Error> {
    let fleet = ctx.fleet()?;
    let observed = observe::observe(&fleet).await?;
    let mut rows = Vec::new();
    let mut front_doors = Vec::new();
    let mut maintenance = None;
    // The process groups the front door routes to (a worker takes no traffic).
    let served: Vec<String> = {
        let doors = match ctx.settings.target {
            crate::config::Target::Local => &ctx.settings.proxy.local,
            crate::config::Target::Ssh => &ctx.settings.proxy.public,
        };
        doors.iter().flat_map(|d| d.groups.iter().cloned()).collect()
    };
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
                group: record.group.clone(),
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
                traffic: routing
                    && instance.alive
                    && (instance.routed || !has_table)
                    && health == "passing"
                    && served.contains(&record.group),
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

pub struct LogsOptions {
    pub region: Option<String>,
    pub instance: Option<String>,
    pub lines: usize,
    pub follow: bool,
}

/// How often `logs --follow` reads the logs, and how often it looks for new instances.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_millis(500);
const LOOK_FOR_INSTANCES_EVERY: u32 = 4;

pub async fn logs(ctx: &Ctx, opts: LogsOptions) -> Result<(), Error> {
    let fleet = ctx.fleet()?;
    if let Some(region) = &opts.region {
        if !fleet.regions.iter().any(|r| &r.name == region) {
            return Err(Error::usage(format!(
                "no region `{region}` in the config (regions: {})",
                fleet.region_names().join(", ")
            )));
        }
    }
    let wanted = |r: &crate::host::InstanceRecord| {
        opts.region.as_ref().is_none_or(|want| want == &r.region)
            && opts.instance.as_ref().is_none_or(|want| r.id.starts_with(want.as_str()))
    };
    let observed = observe::observe(&fleet).await?;
    let mut found = false;
    let mut shown = Vec::new();
    // Where each followed instance's log was read up to: (host, region, offset).
    let mut following: BTreeMap<String, (String, String, Option<u64>)> = BTreeMap::new();
    for host in fleet.hosts() {
        let Some(state) = observed.get(&host.name) else { continue };
        for inst in state.instances.iter().filter(|i| wanted(&i.record)) {
            let r = &inst.record;
            found = true;
            if opts.follow {
                // Where the log ends now, before its tail is read: a line written in
                // between shows twice rather than not at all.
                let (_, end) =
                    host.log_read(&r.id, None).await.map_err(|source| Error::Host { step: "reading logs", source })?;
                following.insert(r.id.clone(), (host.name.clone(), r.region.clone(), Some(end)));
            }
            let tail = host
                .log_tail(&r.id, opts.lines, false)
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
        if let Some(id) = &opts.instance {
            return Err(Error::usage(format!("no instance `{id}`; `ferry status` lists them")));
        }
    }
    ctx.show(&Logs(shown));
    if !opts.follow {
        return Ok(());
    }
    // One listener for the whole run: a Ctrl-C while a host is asked is not lost.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut ticks = 0u32;
    loop {
        let tick = async {
            tokio::time::sleep(FOLLOW_EVERY).await;
            ticks += 1;
            if ticks.is_multiple_of(LOOK_FOR_INSTANCES_EVERY) {
                // Instances a deploy started since are followed from their first line;
                // those gone are dropped.
                if let Ok(observed) = observe::observe(&fleet).await {
                    let mut now = BTreeMap::new();
                    for (host, state) in &observed {
                        for inst in state.instances.iter().filter(|i| wanted(&i.record)) {
                            let id = inst.record.id.clone();
                            let known = following.remove(&id);
                            now.insert(
                                id,
                                known.unwrap_or_else(|| (host.clone(), inst.record.region.clone(), Some(0))),
                            );
                        }
                    }
                    following = now;
                }
            }
            let mut batch = Vec::new();
            for (id, (host_name, region, offset)) in &mut following {
                let Some(host) = fleet.hosts().find(|h| &h.name == host_name) else { continue };
                let Ok((lines, end)) = host.log_read(id, *offset).await else { continue };
                *offset = Some(end);
                batch.extend(lines.into_iter().map(|line| LogLine {
                    region: region.clone(),
                    instance: id.clone(),
                    line,
                }));
            }
            if !batch.is_empty() {
                ctx.show(&Logs(batch));
            }
        };
        tokio::select! {
            () = tick => {}
            _ = &mut interrupted => return Ok(()),
        }
    }
}
