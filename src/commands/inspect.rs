//! Read-only commands: `ferry status`, `ferry releases`, `ferry logs`.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::error::Error;
use crate::fleet::Fleet;
use crate::health::Checks;
use crate::host::now_ms;

use super::{observe, read_history, Ctx};

#[derive(Debug, Serialize)]
struct InstanceRow {
    region: String,
    host: String,
    id: String,
    version: String,
    state: &'static str,
    health: &'static str,
    port: u16,
    pid: Option<u32>,
    uptime_secs: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Status {
    app: String,
    current_version: Option<String>,
    instances: Vec<InstanceRow>,
}

pub async fn status(ctx: &Ctx) -> Result<(), Error> {
    let fleet = Fleet::from_config(&ctx.config, &ctx.ssh)?;
    let observed = observe(&fleet).await?;
    let mut warnings = Vec::new();
    let checks = Checks::from_config(&ctx.config, &mut warnings);
    let mut rows = Vec::new();
    for host in fleet.hosts() {
        let Some(state) = observed.get(&host.name) else { continue };
        for instance in &state.instances {
            let record = &instance.record;
            let health = if instance.alive {
                match host.transport.forward(record.port).await {
                    Ok(addr) if checks.check(addr, !host.transport.is_local()).await.is_ok() => "passing",
                    _ => "failing",
                }
            } else {
                "-"
            };
            rows.push(InstanceRow {
                region: record.region.clone(),
                host: host.name.clone(),
                id: record.id.clone(),
                version: record.version.clone(),
                state: if instance.alive { "running" } else { "stopped" },
                health,
                port: record.port,
                pid: instance.alive.then_some(record.pid),
                uptime_secs: instance.alive.then(|| now_ms().saturating_sub(record.started_at) / 1000),
            });
        }
    }
    let current = fleet.hosts().find_map(|h| observed.get(&h.name).and_then(|s| s.current.clone()));
    let status = Status { app: ctx.config.app.clone(), current_version: current, instances: rows };
    if ctx.json {
        println!("{}", serde_json::to_string(&status).unwrap_or_default());
        return Ok(());
    }
    let mut out =
        format!("app {}  current version {}\n", status.app, status.current_version.as_deref().unwrap_or("(none)"));
    if status.instances.is_empty() {
        out.push_str("no instances; run `ferry deploy`\n");
    } else {
        let _ = writeln!(
            out,
            "{:<8} {:<14} {:<16} {:<12} {:<8} {:<8} {:>6} {:>8} {:>8}",
            "REGION", "HOST", "ID", "VERSION", "STATE", "HEALTH", "PORT", "PID", "UPTIME"
        );
        for r in &status.instances {
            let pid = r.pid.map_or("-".to_string(), |p| p.to_string());
            let uptime = r
                .uptime_secs
                .map_or("-".to_string(), |s| humantime::format_duration(Duration::from_secs(s)).to_string());
            let _ = writeln!(
                out,
                "{:<8} {:<14} {:<16} {:<12} {:<8} {:<8} {:>6} {:>8} {:>8}",
                r.region, r.host, r.id, r.version, r.state, r.health, r.port, pid, uptime
            );
        }
    }
    print!("{out}");
    Ok(())
}

pub async fn releases(ctx: &Ctx) -> Result<(), Error> {
    let fleet = Fleet::from_config(&ctx.config, &ctx.ssh)?;
    let mut entries = read_history(&fleet).await;
    entries.reverse();
    if ctx.json {
        println!("{}", serde_json::to_string(&entries).unwrap_or_default());
        return Ok(());
    }
    if entries.is_empty() {
        println!("no releases yet; run `ferry deploy`");
        return Ok(());
    }
    let mut out =
        format!("{:<14} {:<9} {:<12} {:<21} {:<24} {}\n", "VERSION", "KIND", "STATUS", "WHEN", "BY", "PREVIOUS");
    for e in &entries {
        let _ = writeln!(
            out,
            "{:<14} {:<9} {:<12} {:<21} {:<24} {}",
            e.version,
            e.kind,
            e.status,
            e.started_at,
            e.by,
            e.previous.as_deref().unwrap_or("-")
        );
        if let Some(message) = e.message.as_ref().filter(|_| e.status != "complete") {
            let _ = writeln!(out, "    {message}");
        }
    }
    print!("{out}");
    Ok(())
}

pub async fn logs(ctx: &Ctx, region: Option<String>, instance: Option<String>, lines: usize) -> Result<(), Error> {
    let fleet = Fleet::from_config(&ctx.config, &ctx.ssh)?;
    if let Some(region) = &region {
        if !fleet.regions.iter().any(|r| &r.name == region) {
            return Err(Error::usage(format!(
                "no region `{region}` in the config (regions: {})",
                fleet.region_names().join(", ")
            )));
        }
    }
    let observed = observe(&fleet).await?;
    let mut found = false;
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
            let tail =
                host.log_tail(&r.id, lines).await.map_err(|source| Error::Host { step: "reading logs", source })?;
            for line in tail {
                println!("{}/{} | {line}", r.region, r.id);
            }
        }
    }
    if !found {
        if let Some(id) = instance {
            return Err(Error::usage(format!("no instance `{id}`; `ferry status` lists them")));
        }
    }
    Ok(())
}
