//! `ferry volumes create|list|destroy`: storage on one host of a region (a directory
//! under the app's `volumes/`), sized against that filesystem's free space, bound to
//! at most one instance through `[mounts]`.

use std::fmt::Write as _;

use crate::config::Target;
use crate::error::Error;
use crate::fleet::{local_root, Fleet};
use crate::host::{Host, Volume, VolumeCreated};
use crate::report::{Event, Outcome};
use crate::transport::{LocalTransport, SshTransport, Transport};

use super::{confirm, lock, observe, Ctx};

pub struct CreateOptions {
    pub name: String,
    pub region: String,
    pub size_gb: u64,
    pub host: Option<String>,
}

/// The host the volume goes on: `--host`, else the region's host with the fewest
/// volumes. A region not in fly.toml yet (volumes come before `regions add`) needs
/// `--host` on the ssh target.
async fn choose_host(ctx: &Ctx, fleet: &Fleet, opts: &CreateOptions) -> Result<Host, Error> {
    if let Some(region) = fleet.regions.iter().find(|r| r.name == opts.region) {
        if let Some(spec) = &opts.host {
            return region
                .hosts
                .iter()
                .find(|h| &h.name == spec)
                .cloned()
                .ok_or_else(|| Error::usage(format!("`{spec}` is not a host of region `{}`", opts.region)));
        }
        let observed = observe(fleet).await?;
        let fewest = region.hosts.iter().min_by_key(|h| observed.get(&h.name).map_or(0, |s| s.volumes.len()));
        return fewest.cloned().ok_or_else(|| Error::usage(format!("region `{}` has no host", opts.region)));
    }
    match (&ctx.config.ferry.target, &opts.host) {
        (Target::Local, _) => Ok(Host {
            name: format!("local/{}", opts.region),
            region: opts.region.clone(),
            transport: Transport::Local(LocalTransport::new(format!("local/{}", opts.region))),
            app_dir: local_root(&ctx.config.dir)
                .join(&opts.region)
                .join("local")
                .join(&ctx.config.app)
                .display()
                .to_string(),
        }),
        (Target::Ssh, Some(spec)) => Ok(Host {
            name: spec.clone(),
            region: opts.region.clone(),
            transport: Transport::Ssh(SshTransport::new(spec, ctx.ssh.clone())),
            app_dir: format!("{}/{}", ctx.config.ferry.root.trim_end_matches('/'), ctx.config.app),
        }),
        (Target::Ssh, None) => Err(Error::Usage {
            message: format!("region `{}` is not in fly.toml yet, so ferry does not know its hosts", opts.region),
            hint: Some(format!(
                "pass `--host user@host` (and add the region with `ferry regions add {} --host ...`)",
                opts.region
            )),
        }),
    }
}

pub async fn create(ctx: &Ctx, opts: CreateOptions) -> Result<(), Error> {
    if !opts.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || opts.name.is_empty() {
        return Err(Error::usage(format!("invalid volume name `{}`: use letters, digits and `_`", opts.name)));
    }
    if opts.size_gb == 0 {
        return Err(Error::usage("a volume needs a size of at least 1 GB"));
    }
    let fleet = Fleet::from_config(&ctx.config, &ctx.ssh)?;
    let host = choose_host(ctx, &fleet, &opts).await?;
    let volume = Volume {
        id: format!("vol_{}", super::new_instance_id()),
        name: opts.name.clone(),
        region: opts.region.clone(),
        host: host.name.clone(),
        size_gb: opts.size_gb,
        created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        attached: None,
    };
    let created = host
        .volume_create(&volume)
        .await
        .map_err(|source| crate::error::before_change(&host.name, "creating a volume", source))?;
    if let VolumeCreated::NoSpace(free_kib) = created {
        return Err(Error::Failed {
            message: format!(
                "volume `{}` of {} GB does not fit on `{}`: its filesystem has {:.1} GB free; nothing was created",
                opts.name,
                opts.size_gb,
                host.name,
                bytes_gb(free_kib * 1024)
            ),
            hint: Some("choose a smaller `--size`, another `--host`, or free space there".into()),
        });
    }
    if ctx.json {
        println!("{}", serde_json::to_string(&volume).unwrap_or_default());
    } else {
        eprintln!(
            "created volume {} `{}` ({} GB) in {} on {}",
            volume.id, volume.name, volume.size_gb, volume.region, volume.host
        );
    }
    Ok(())
}

#[allow(clippy::cast_precision_loss)] // a display figure
fn bytes_gb(bytes: u64) -> f64 {
    bytes as f64 / 1e9
}

pub async fn list(ctx: &Ctx) -> Result<(), Error> {
    let fleet = Fleet::from_config(&ctx.config, &ctx.ssh)?;
    let observed = observe(&fleet).await?;
    let volumes: Vec<&Volume> =
        fleet.hosts().filter_map(|h| observed.get(&h.name)).flat_map(|s| s.volumes.iter()).collect();
    if ctx.json {
        println!("{}", serde_json::to_string(&volumes).unwrap_or_default());
        return Ok(());
    }
    if volumes.is_empty() {
        println!("no volumes; `ferry volumes create NAME --region R --size GB` makes one");
        return Ok(());
    }
    let mut out = format!(
        "{:<20} {:<12} {:<8} {:>6} {:<24} {:<16} {}\n",
        "ID", "NAME", "REGION", "SIZE", "HOST", "ATTACHED", "CREATED"
    );
    for v in volumes {
        let _ = writeln!(
            out,
            "{:<20} {:<12} {:<8} {:>4}GB {:<24} {:<16} {}",
            v.id,
            v.name,
            v.region,
            v.size_gb,
            v.host,
            v.attached.as_deref().unwrap_or("-"),
            v.created_at
        );
    }
    print!("{out}");
    Ok(())
}

pub async fn destroy(ctx: &Ctx, id: &str, yes: bool) -> Result<(), Error> {
    let fleet = Fleet::from_config(&ctx.config, &ctx.ssh)?;
    let observed = observe(&fleet).await?;
    let Some((host, volume)) = fleet.hosts().find_map(|h| {
        observed.get(&h.name).and_then(|s| s.volumes.iter().find(|v| v.id == id)).map(|v| (h, v.clone()))
    }) else {
        return Err(Error::Usage {
            message: format!("no volume `{id}`"),
            hint: Some("`ferry volumes list` shows them".into()),
        });
    };
    if let Some(instance) = &volume.attached {
        return Err(Error::Usage {
            message: format!(
                "volume {id} is attached to instance {instance}; its data would be lost under a running instance"
            ),
            hint: Some(format!("scale the region down first (`ferry scale count N --region {}`)", volume.region)),
        });
    }
    if !yes {
        confirm(ctx, &format!("destroy volume {id} `{}` and all its data?", volume.name))?;
    }
    let guard = lock(ctx, &fleet, "volumes destroy", None).await?;
    let result = host.volume_destroy(id).await;
    guard.release().await;
    match result.map_err(|source| Error::Host { step: "destroying a volume", source })? {
        Ok(()) => {
            ctx.event(Event::Finished {
                outcome: Outcome::Succeeded,
                version: None,
                previous: None,
                message: format!("destroyed volume {id}"),
                duration_ms: 0,
            });
            Ok(())
        }
        Err(instance) => {
            Err(Error::usage(format!("volume {id} was just attached to instance {instance}; not destroyed")))
        }
    }
}
