//! `ferry regions list|add|remove` and `ferry scale count`: change where and how many
//! instances run, record it in fly.toml (comments and formatting kept), and let the
//! engine start or stop instances of the current release right away, behind the same
//! health checks.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{edit, Target};
use crate::deploy::observe::{self, Observed};
use crate::deploy::plan::Kind;
use crate::deploy::{Operation, Stops};
use crate::error::Error;
use crate::fleet::Fleet;
use crate::host::InstanceState;
use crate::report::views::{RegionRow, Regions};

use super::Ctx;

pub async fn list(ctx: &Ctx) -> Result<(), Error> {
    let fleet = ctx.fleet()?;
    let observed = observe::observe(&fleet).await?;
    let rows = fleet
        .regions
        .iter()
        .map(|region| {
            let instances = region_instances(&fleet, &region.name, &observed);
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
    ctx.show(&Regions(rows));
    Ok(())
}

/// The instances of `region` on its hosts, as observed.
fn region_instances<'a>(fleet: &Fleet, region: &str, observed: &'a Observed) -> Vec<&'a InstanceState> {
    fleet
        .regions
        .iter()
        .filter(|r| r.name == region)
        .flat_map(|r| r.hosts.iter())
        .filter_map(|h| observed.get(&h.name))
        .flat_map(|s| s.instances.iter())
        .filter(|i| i.record.region == region)
        .collect()
}

pub async fn add(ctx: &Ctx, name: &str, hosts: Vec<String>, count: Option<u32>) -> Result<(), Error> {
    if ctx.config.ferry.regions.contains_key(name) {
        return Err(Error::usage(format!("region `{name}` is already in `{}`", ctx.config_path.display())));
    }
    if ctx.settings.target == Target::Ssh && hosts.is_empty() {
        return Err(Error::Usage {
            message: format!("the ssh target needs at least one host for region `{name}`"),
            hint: Some(format!("`ferry regions add {name} --host deploy@{name}1.example.com`")),
        });
    }
    let count = count.unwrap_or(1);
    let implicit = implicit_regions(ctx);
    let path = ctx.config_path.clone();
    let (text, edited) = ctx.preview_edit(|text| {
        // Without `[ferry.regions]` the app ran in one implicit region: record it first
        // so adding a region does not silently drop it.
        let mut text = text.to_string();
        for (region, count) in &implicit {
            text = edit::add_region(&path, &text, region, &[], *count)?;
        }
        edit::add_region(&path, &text, name, &hosts, count)
    })?;
    let op = Operation::Converge {
        kind: Kind::RegionsAdd,
        regions: vec![name.to_string()],
        stop: Stops::Ids(Vec::new()),
        done: None,
    };
    let fleet = edited.fleet()?;
    // Refused before fly.toml changes when its instances would have no volume.
    edited.engine(&fleet).preview(&op).await?;
    edited.write_config(text)?;
    edited.reporter.note(&format!(
        "added [ferry.regions.{name}] (count = {count}) to {}",
        edited.config_path.file_name().map_or_else(|| "fly.toml".into(), |f| f.to_string_lossy())
    ));
    edited.engine(&fleet).run(op).await
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
    let fleet = ctx.fleet()?;
    let Some(region) = fleet.regions.iter().find(|r| r.name == name) else {
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
    let observed = observe::observe(&fleet).await?;
    let running = region_instances(&fleet, name, &observed).len();
    if running > 0 && !yes {
        ctx.confirm(&format!("stop {running} instance(s) in `{name}` and remove the region?"))?;
    }
    let path = ctx.config_path.clone();
    let (text, _) = ctx.preview_edit(|text| edit::remove_region(&path, text, name))?;
    // Its instances (all of them, as found under the lock) stop first, while
    // fly.toml still names the region's hosts.
    let op = Operation::Converge {
        kind: Kind::RegionsRemove,
        regions: Vec::new(),
        stop: Stops::Region(name.to_string()),
        done: Some(format!("region `{name}` removed (and from fly.toml)")),
    };
    ctx.engine(&fleet).run(op).await?;
    ctx.write_config(text)
}

pub struct ScaleOptions {
    /// `(None, n)`: `count`; `(Some(group), n)`: that process group's.
    pub counts: Vec<(Option<String>, u32)>,
    pub region: Option<String>,
    pub yes: bool,
    pub dry_run: bool,
}

pub async fn scale(ctx: &Ctx, opts: ScaleOptions) -> Result<(), Error> {
    let fleet = ctx.fleet()?;
    let targets: Vec<String> = match &opts.region {
        Some(r) if fleet.regions.iter().any(|x| &x.name == r) => vec![r.clone()],
        Some(r) => return Err(Error::usage(format!("no region `{r}` (regions: {})", fleet.region_names().join(", ")))),
        None => fleet.region_names(),
    };
    let groups = ctx.config.groups();
    let mut seen = BTreeSet::new();
    for (group, _) in &opts.counts {
        if let Some(group) = group.as_ref().filter(|g| !groups.contains(g)) {
            return Err(Error::usage(format!("no process group `{group}` (groups: {})", groups.join(", "))));
        }
        if !seen.insert(group.clone()) {
            let what = group.as_ref().map_or_else(|| "`count`".to_string(), |g| format!("process group `{g}`"));
            return Err(Error::usage(format!("{what} is given more than one count")));
        }
    }
    let observed = observe::observe(&fleet).await?;
    let configured: BTreeMap<String, crate::config::RegionConfig> = ctx.config.regions().into_iter().collect();
    let mut stops = Vec::new();
    let mut change = Vec::new();
    for region in &targets {
        for group in &groups {
            let named = opts.counts.iter().find(|(g, _)| g.as_ref() == Some(group)).map(|(_, n)| *n);
            let counted = configured.get(region).is_some_and(|r| r.counts.contains_key(group));
            let bare = opts.counts.iter().find(|(g, _)| g.is_none()).map(|(_, n)| *n).filter(|_| !counted);
            let Some(want) = named.or(bare) else { continue };
            let mut instances: Vec<&InstanceState> =
                region_instances(&fleet, region, &observed).into_iter().filter(|i| &i.record.group == group).collect();
            let label = if groups.len() > 1 { format!("{region} {group}") } else { region.clone() };
            change.push(format!("{label} {} -> {want}", instances.len()));
            if instances.len() > want as usize {
                // Newest first: the longest-running instances keep serving.
                instances.sort_by_key(|i| std::cmp::Reverse((i.record.created_at, i.record.id.clone())));
                stops.extend(instances.iter().take(instances.len() - want as usize).map(|i| i.record.id.clone()));
            }
        }
    }
    let implicit = implicit_regions(ctx);
    let path = ctx.config_path.clone();
    let (text, edited) = ctx.preview_edit(|text| {
        let implicit_name = implicit.first().map_or("local", |(n, _)| n.as_str());
        edit::set_counts(&path, text, opts.region.as_deref(), implicit_name, &opts.counts)
    })?;
    let counts: Vec<String> = opts
        .counts
        .iter()
        .map(|(group, n)| match group {
            Some(group) => format!("{group} {n}"),
            None if groups.len() > 1 => format!("{n} for the other groups"),
            None => n.to_string(),
        })
        .collect();
    let op = Operation::Converge {
        kind: Kind::Scale,
        regions: targets.clone(),
        stop: Stops::Ids(stops.clone()),
        done: Some(format!("count is {} in {} (written to fly.toml)", counts.join(", "), targets.join(", "))),
    };
    let fleet = edited.fleet()?;
    let engine = edited.engine(&fleet);
    let plan = engine.preview(&op).await?;
    if let Some(plan) = &plan {
        engine.report_plan(plan);
    }
    if opts.dry_run {
        edited.finished(format!("dry run: {}; nothing was changed", change.join(", ")));
        return Ok(());
    }
    if !stops.is_empty() && !opts.yes {
        ctx.confirm(&format!("stop {} instance(s)?", stops.len()))?;
    }
    edited.write_config(text)?;
    edited.engine(&fleet).run(op).await
}
