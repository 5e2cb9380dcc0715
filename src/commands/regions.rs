//! `ferry regions list|add|remove` and `ferry scale count`: change where and how many
//! instances run, record it in fly.toml (comments and formatting kept), and start or
//! stop instances of the current release right away, behind the same health checks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::config::{self, edit};
use crate::error::Error;
use crate::fleet::Fleet;
use crate::health::Checks;
use crate::host::{Host, HostState, InstanceState};
use crate::plan::{self, Action, Plan, RegionSpec};
use crate::release;
use crate::report::{Event, Outcome};

use super::{confirm, healthy_on, lock, millis, new_instance_id, observe, Ctx};

#[derive(Debug, Serialize)]
struct RegionRow {
    region: String,
    primary: bool,
    hosts: Vec<String>,
    count: u32,
    running: usize,
    versions: Vec<String>,
}

pub async fn list(ctx: &Ctx) -> Result<(), Error> {
    let fleet = Fleet::from_config(&ctx.config, &ctx.ssh)?;
    let observed = observe(&fleet).await?;
    let rows: Vec<RegionRow> = fleet
        .regions
        .iter()
        .map(|region| {
            let instances: Vec<&InstanceState> = region_instances(region.name.as_str(), &region.hosts, &observed);
            RegionRow {
                region: region.name.clone(),
                primary: region.primary,
                hosts: region.hosts.iter().map(|h| h.name.clone()).collect(),
                count: region.count,
                running: instances.iter().filter(|i| i.alive).count(),
                versions: instances
                    .iter()
                    .map(|i| i.record.version.clone())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
            }
        })
        .collect();
    if ctx.json {
        println!("{}", serde_json::to_string(&rows).unwrap_or_default());
        return Ok(());
    }
    let mut out =
        format!("{:<8} {:<7} {:>5} {:>7}  {:<12} {}\n", "REGION", "PRIMARY", "COUNT", "RUNNING", "VERSIONS", "HOSTS");
    for r in &rows {
        let versions = if r.versions.is_empty() { "-".to_string() } else { r.versions.join(",") };
        let _ = writeln!(
            out,
            "{:<8} {:<7} {:>5} {:>7}  {:<12} {}",
            r.region,
            if r.primary { "yes" } else { "" },
            r.count,
            r.running,
            versions,
            r.hosts.join(" ")
        );
    }
    print!("{out}");
    Ok(())
}

fn region_instances<'a>(
    region: &str,
    hosts: &[Host],
    observed: &'a BTreeMap<String, HostState>,
) -> Vec<&'a InstanceState> {
    hosts
        .iter()
        .filter_map(|h| observed.get(&h.name))
        .flat_map(|s| s.instances.iter())
        .filter(|i| i.record.region == region)
        .collect()
}

pub async fn add(ctx: &Ctx, name: &str, hosts: Vec<String>, count: Option<u32>) -> Result<(), Error> {
    if ctx.config.ferry.regions.contains_key(name) {
        return Err(Error::usage(format!("region `{name}` is already in `{}`", ctx.config_path.display())));
    }
    if ctx.config.ferry.target == config::Target::Ssh && hosts.is_empty() {
        return Err(Error::Usage {
            message: format!("the ssh target needs at least one host for region `{name}`"),
            hint: Some(format!("`ferry regions add {name} --host deploy@{name}1.example.com`")),
        });
    }
    let count = count.unwrap_or(1);
    let implicit = implicit_regions(ctx);
    let path = ctx.config_path.clone();
    let name_owned = name.to_string();
    let (text, ctx) = preview(ctx, move |text| {
        // Without `[ferry.regions]` the app ran in one implicit region: record it first
        // so adding a region does not silently drop it.
        let mut text = text.to_string();
        for (region, count) in &implicit {
            text = edit::add_region(&path, &text, region, &[], *count)?;
        }
        edit::add_region(&path, &text, &name_owned, &hosts, count)
    })?;
    precheck(&ctx, &[name.to_string()]).await?;
    write_config(&ctx, text)?;
    converge(&ctx, &[name.to_string()], "regions add").await
}

/// The region ferry uses when `[ferry.regions]` is empty, with its count.
fn implicit_regions(ctx: &Ctx) -> Vec<(String, u32)> {
    if ctx.config.ferry.regions.is_empty() {
        ctx.config.regions().into_iter().map(|(name, r)| (name, r.count)).collect()
    } else {
        Vec::new()
    }
}

pub async fn remove(ctx: &Ctx, name: &str, yes: bool) -> Result<(), Error> {
    let fleet = Fleet::from_config(&ctx.config, &ctx.ssh)?;
    let Some(region) = fleet.regions.iter().find(|r| r.name == name).cloned() else {
        return Err(Error::usage(format!(
            "no region `{name}` in `{}` (regions: {})",
            ctx.config_path.display(),
            fleet.region_names().join(", ")
        )));
    };
    if region.primary {
        return Err(Error::Usage {
            message: format!("`{name}` is the primary region; it cannot be removed"),
            hint: Some("change `primary_region` first if you really mean to move the primary".into()),
        });
    }
    let guard = lock(ctx, &fleet, "regions remove", None).await?;
    let result = async {
        let observed = observe(&fleet).await?;
        let doomed: Vec<InstanceState> =
            region_instances(name, &region.hosts, &observed).into_iter().cloned().collect();
        if !doomed.is_empty() && !yes {
            confirm(ctx, &format!("stop {} instance(s) in `{name}` and remove the region?", doomed.len()))?;
        }
        stop_instances(ctx, &fleet, &doomed).await?;
        let path = ctx.config_path.clone();
        let name = name.to_string();
        edit_config(ctx, move |text| edit::remove_region(&path, text, &name))
    }
    .await;
    guard.release().await;
    result?;
    ctx.event(Event::Finished {
        outcome: Outcome::Succeeded,
        version: None,
        previous: None,
        message: format!("region `{name}` removed"),
        duration_ms: 0,
    });
    Ok(())
}

#[derive(Debug, Clone)]
pub struct ScaleOptions {
    pub count: u32,
    pub region: Option<String>,
    pub yes: bool,
    pub dry_run: bool,
}

pub async fn scale(ctx: &Ctx, opts: ScaleOptions) -> Result<(), Error> {
    let fleet = Fleet::from_config(&ctx.config, &ctx.ssh)?;
    let targets: Vec<String> = match &opts.region {
        Some(r) if fleet.regions.iter().any(|x| &x.name == r) => vec![r.clone()],
        Some(r) => return Err(Error::usage(format!("no region `{r}` (regions: {})", fleet.region_names().join(", ")))),
        None => fleet.region_names(),
    };
    let observed = observe(&fleet).await?;
    let mut stops = Vec::new();
    let mut starts = 0usize;
    for region in fleet.regions.iter().filter(|r| targets.contains(&r.name)) {
        let mut instances: Vec<InstanceState> =
            region_instances(&region.name, &region.hosts, &observed).into_iter().cloned().collect();
        let want = opts.count as usize;
        if instances.len() > want {
            // Newest first: the longest-running instances keep serving.
            instances.sort_by_key(|i| std::cmp::Reverse((i.record.created_at, i.record.id.clone())));
            let excess = instances.len() - want;
            stops.extend(instances.into_iter().take(excess));
        } else {
            starts += want - instances.len();
        }
        ctx.event(Event::Plan {
            region: region.name.clone(),
            instance: "-".into(),
            host: "-".into(),
            action: format!(
                "count {} -> {}",
                region_instances(&region.name, &region.hosts, &observed).len(),
                opts.count
            ),
            from: None,
            to: opts.count.to_string(),
        });
    }
    for stop in &stops {
        ctx.event(Event::Plan {
            region: stop.record.region.clone(),
            instance: stop.record.id.clone(),
            host: stop.record.host.clone(),
            action: "stop".into(),
            from: Some(stop.record.version.clone()),
            to: "-".into(),
        });
    }
    if opts.dry_run {
        return Ok(());
    }
    if !stops.is_empty() && !opts.yes {
        confirm(ctx, &format!("stop {} instance(s)?", stops.len()))?;
    }
    let implicit = implicit_regions(ctx);
    let path = ctx.config_path.clone();
    let (count, region) = (opts.count, opts.region.clone());
    let (text, ctx) = preview(ctx, move |text| {
        let implicit_name = implicit.first().map_or("local", |(n, _)| n.as_str());
        edit::set_count(&path, text, region.as_deref(), implicit_name, count)
    })?;
    if starts > 0 {
        precheck(&ctx, &targets).await?;
    }
    write_config(&ctx, text)?;
    let fleet = Fleet::from_config(&ctx.config, &ctx.ssh)?;
    if !stops.is_empty() {
        let guard = lock(&ctx, &fleet, "scale", None).await?;
        let result = stop_instances(&ctx, &fleet, &stops).await;
        guard.release().await;
        result?;
    }
    if starts > 0 {
        converge(&ctx, &targets, "scale").await?;
    } else {
        ctx.event(Event::Finished {
            outcome: Outcome::Succeeded,
            version: None,
            previous: None,
            message: format!("count is {} in {}", opts.count, targets.join(", ")),
            duration_ms: 0,
        });
    }
    Ok(())
}

async fn stop_instances(ctx: &Ctx, fleet: &Fleet, instances: &[InstanceState]) -> Result<(), Error> {
    for instance in instances {
        let Some(host) = fleet.hosts().find(|h| h.name == instance.record.host) else { continue };
        host.stop_instance(&instance.record.id, &ctx.config.kill_signal, ctx.config.kill_timeout)
            .await
            .map_err(|source| Error::Host { step: "stopping an instance", source })?;
        host.remove_instance(&instance.record.id)
            .await
            .map_err(|source| Error::Host { step: "removing an instance", source })?;
        ctx.event(Event::InstanceStopped {
            region: instance.record.region.clone(),
            host: host.name.clone(),
            instance: instance.record.id.clone(),
        });
    }
    Ok(())
}

fn edit_config(ctx: &Ctx, f: impl FnOnce(&str) -> Result<String, edit::EditError>) -> Result<(), Error> {
    edit::edit_file(&ctx.config_path, f).map_err(|e| Error::Failed { message: e.to_string(), hint: None })
}

/// The edited fly.toml text and the config it would give, without writing anything.
fn preview(ctx: &Ctx, f: impl FnOnce(&str) -> Result<String, edit::EditError>) -> Result<(String, Ctx), Error> {
    let text = std::fs::read_to_string(&ctx.config_path).map_err(|source| Error::Io {
        action: "read",
        path: ctx.config_path.display().to_string(),
        source,
    })?;
    let edited = f(&text).map_err(|e| Error::Failed { message: e.to_string(), hint: None })?;
    let loaded = config::parse(&ctx.config_path, &edited)?;
    Ok((edited, with_config(ctx, loaded.config)))
}

fn write_config(ctx: &Ctx, text: String) -> Result<(), Error> {
    edit::edit_file(&ctx.config_path, move |_| Ok(text))
        .map_err(|e| Error::Failed { message: e.to_string(), hint: None })
}

/// Refuses, before anything changes, a change whose new instances would have no free
/// volume to mount.
async fn precheck(ctx: &Ctx, regions: &[String]) -> Result<(), Error> {
    if crate::deploy::app_mounts(&ctx.config).is_empty() {
        return Ok(());
    }
    let fleet = Fleet::from_config(&ctx.config, &ctx.ssh)?;
    let observed = observe(&fleet).await?;
    let Some(version) = fleet.hosts().find_map(|h| observed.get(&h.name).and_then(|s| s.current.clone())) else {
        return Ok(());
    };
    let plan = creation_plan(ctx, &fleet, &observed, &BTreeSet::new(), &version, regions);
    super::deploy::check_volumes(ctx, &fleet, &observed, &plan)
}

/// New instances only (in `regions`), to bring them up to their count.
fn creation_plan(
    ctx: &Ctx,
    fleet: &Fleet,
    observed: &BTreeMap<String, HostState>,
    healthy: &BTreeSet<String>,
    version: &str,
    regions: &[String],
) -> Plan {
    let specs: Vec<RegionSpec> = fleet
        .regions
        .iter()
        .filter(|r| regions.contains(&r.name))
        .map(|r| RegionSpec {
            name: r.name.clone(),
            primary: false,
            count: r.count,
            hosts: r.hosts.iter().map(|h| h.name.clone()).collect(),
        })
        .collect();
    let mounts: Vec<String> = crate::deploy::app_mounts(&ctx.config).iter().map(|m| m.source.clone()).collect();
    let inputs = plan::Inputs {
        regions: &specs,
        observed,
        healthy,
        version,
        strategy: crate::config::Strategy::Rolling,
        max_unavailable: ctx.config.deploy.max_unavailable,
        mounts: &mounts,
    };
    let mut plan = plan::rollout(&inputs, &mut new_instance_id);
    // Scaling only adds instances; replacing unhealthy ones is `ferry deploy`'s job.
    for region in &mut plan.regions {
        region.batches.retain(|b| b.iter().all(|s| s.action == Action::Create));
    }
    plan
}

fn with_config(ctx: &Ctx, config: crate::config::Config) -> Ctx {
    Ctx {
        config: Arc::new(config),
        config_path: ctx.config_path.clone(),
        reporter: ctx.reporter.clone(),
        json: ctx.json,
        ssh: ctx.ssh.clone(),
        interactive: ctx.interactive,
    }
}

/// Starts missing instances of the current release in `regions`, shipping the release
/// to hosts that lack it. Without a deployed release there is nothing to start yet.
async fn converge(ctx: &Ctx, regions: &[String], command: &str) -> Result<(), Error> {
    let started = tokio::time::Instant::now();
    let fleet = Fleet::from_config(&ctx.config, &ctx.ssh)?;
    let guard = lock(ctx, &fleet, command, None).await?;
    let result = converge_locked(ctx, &fleet, regions, started).await;
    guard.release().await;
    result
}

async fn converge_locked(
    ctx: &Ctx,
    fleet: &Fleet,
    regions: &[String],
    started: tokio::time::Instant,
) -> Result<(), Error> {
    let observed = observe(fleet).await?;
    let Some(version) = fleet.hosts().find_map(|h| observed.get(&h.name).and_then(|s| s.current.clone())) else {
        ctx.event(Event::Finished {
            outcome: Outcome::Succeeded,
            version: None,
            previous: None,
            message: "no release is deployed yet; instances will start with the next `ferry deploy`".into(),
            duration_ms: millis(started.elapsed()),
        });
        return Ok(());
    };
    let targets: Vec<&Host> =
        fleet.regions.iter().filter(|r| regions.contains(&r.name)).flat_map(|r| r.hosts.iter()).collect();
    let missing: Vec<&Host> =
        targets.iter().copied().filter(|h| !observed.get(&h.name).is_some_and(|s| s.has_release(&version))).collect();
    if !missing.is_empty() {
        ship_existing(ctx, fleet, &observed, &version, &missing).await?;
    }
    super::secrets::sync(ctx, fleet, &observed).await?;
    let mut warnings = Vec::new();
    let checks = Checks::from_config(&ctx.config, &mut warnings);
    let healthy = healthy_on(fleet, &observed, &checks, &version).await;
    let plan = creation_plan(ctx, fleet, &observed, &healthy, &version, regions);
    super::deploy::check_volumes(ctx, fleet, &observed, &plan)?;
    let start = ctx.config.start_command().map_or_else(|| "bin/start".to_string(), str::to_string);
    let wait = ctx.config.deploy.wait_timeout;
    let summary = super::deploy::roll_out(
        ctx,
        fleet,
        &observed,
        checks,
        &start,
        wait,
        false,
        plan,
        crate::deploy::Gates::default(),
    )
    .await;
    let outcome = summary.outcome();
    match &summary.failure {
        None => {
            ctx.event(Event::Finished {
                outcome,
                version: Some(version.clone()),
                previous: None,
                message: format!("{version} runs in {}", regions.join(", ")),
                duration_ms: millis(started.elapsed()),
            });
            Ok(())
        }
        Some(failure) => {
            let message = format!(
                "instance {} in {} on `{}` did not become healthy: {}; new instances were removed",
                failure.instance, failure.region, failure.host, failure.reason
            );
            ctx.event(Event::Finished {
                outcome,
                version: Some(version),
                previous: None,
                message: message.clone(),
                duration_ms: millis(started.elapsed()),
            });
            Err(Error::Failed {
                message,
                hint: Some(
                    "the count stays recorded in fly.toml; `ferry deploy` starts them once the problem is fixed".into(),
                ),
            })
        }
    }
}

/// Gets the release `version` onto `missing` hosts: from this machine's build
/// directory when the tarball there matches, else downloaded from a host that has it.
async fn ship_existing(
    ctx: &Ctx,
    fleet: &Fleet,
    observed: &BTreeMap<String, HostState>,
    version: &str,
    missing: &[&Host],
) -> Result<(), Error> {
    let Some((source, installed)) = fleet.hosts().find_map(|h| {
        observed.get(&h.name).and_then(|s| s.releases.iter().find(|r| r.version == version)).map(|r| (h, r.clone()))
    }) else {
        return Err(Error::failed(format!(
            "no host has release {version} any more; run `ferry deploy` to ship it again"
        )));
    };
    let local: PathBuf =
        ctx.config.dir.join(".ferry").join("build").join(format!("{}-{version}.tar.gz", ctx.config.app));
    let tarball = if release::sha256_file(&local).is_ok_and(|sha| sha == installed.sha256) {
        local
    } else {
        let dir = ctx.config.dir.join(".ferry").join("build");
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            action: "create",
            path: dir.display().to_string(),
            source,
        })?;
        let dest = dir.join(format!("{}-{version}.download.tar.gz", ctx.config.app));
        source.transport.download(&source.artifact_path(&installed.sha256), &dest).await.map_err(|e| match e {
            crate::transport::TransportError::Upload { .. } => Error::Failed {
                message: format!(
                    "release {version} is neither in {} nor kept as an archive on `{}`",
                    local.display(),
                    source.name
                ),
                hint: Some(format!(
                    "ship it again with `ferry deploy --version {version}` (or `--release FILE`), then add the hosts"
                )),
            },
            other => Error::Host { step: "fetching the release", source: other.into() },
        })?;
        dest
    };
    let artifact = super::build::take(ctx, tarball).await?;
    if artifact.sha256 != installed.sha256 {
        return Err(Error::failed(format!(
            "the copy of {version} found does not match the hosts' sha256; run `ferry deploy` to ship it again"
        )));
    }
    let only: BTreeSet<&str> = missing.iter().map(|h| h.name.as_str()).collect();
    super::ship::ship_to(ctx, fleet.hosts().filter(|h| only.contains(h.name.as_str())), observed, &artifact).await
}
