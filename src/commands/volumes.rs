//! `ferry volumes create|list|destroy`: storage on one host of a region (a directory
//! under the app's `volumes/`), sized against that filesystem's free space, bound to
//! at most one instance through `[mounts]`.

use crate::config::Target;
use crate::deploy::{lock, new_instance_id, observe};
use crate::error::Error;
use crate::fleet::{local_root, Fleet};
use crate::host::{Host, Volume, VolumeCreated};
use crate::report::views::{CreatedVolume, Volumes};
use crate::transport::{LocalTransport, SshTransport, Transport};

use super::Ctx;

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
        let observed = observe::observe(fleet).await?;
        let fewest = region.hosts.iter().min_by_key(|h| observed.get(&h.name).map_or(0, |s| s.volumes.len()));
        return fewest.cloned().ok_or_else(|| Error::usage(format!("region `{}` has no host", opts.region)));
    }
    match (&ctx.settings.target, &opts.host) {
        (Target::Local, _) => Ok(Host {
            name: format!("local/{}", opts.region),
            region: opts.region.clone(),
            transport: Transport::Local(LocalTransport::new(format!("local/{}", opts.region))),
            app_dir: local_root(&ctx.settings.dir)
                .join(&opts.region)
                .join("local")
                .join(&ctx.settings.app)
                .display()
                .to_string(),
        }),
        (Target::Ssh, Some(spec)) => Ok(Host {
            name: spec.clone(),
            region: opts.region.clone(),
            transport: Transport::Ssh(SshTransport::new(spec, ctx.settings.ssh.clone())),
            app_dir: format!("{}/{}", ctx.settings.root, ctx.settings.app),
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
    let fleet = ctx.fleet()?;
    let host = choose_host(ctx, &fleet, &opts).await?;
    let volume = Volume {
        id: format!("vol_{}", new_instance_id()),
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
    ctx.show(&CreatedVolume(volume));
    Ok(())
}

#[allow(clippy::cast_precision_loss)] // a display figure
fn bytes_gb(bytes: u64) -> f64 {
    bytes as f64 / 1e9
}

pub async fn list(ctx: &Ctx) -> Result<(), Error> {
    let fleet = ctx.fleet()?;
    let observed = observe::observe(&fleet).await?;
    let volumes = fleet.hosts().filter_map(|h| observed.get(&h.name)).flat_map(|s| s.volumes.iter()).cloned().collect();
    ctx.show(&Volumes(volumes));
    Ok(())
}

pub async fn destroy(ctx: &Ctx, id: &str, yes: bool) -> Result<(), Error> {
    let fleet = ctx.fleet()?;
    let observed = observe::observe(&fleet).await?;
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
        ctx.confirm(&format!("destroy volume {id} `{}` and all its data?", volume.name))?;
    }
    let guard = lock::take(&fleet, ctx.reporter.as_ref(), "volumes destroy", ctx.settings.lock_wait).await?;
    let result = host.volume_destroy(id).await;
    guard.release().await;
    match result.map_err(|source| Error::Host { step: "destroying a volume", source })? {
        Ok(()) => {
            ctx.finished(format!("destroyed volume {id}"));
            Ok(())
        }
        Err(instance) => {
            Err(Error::usage(format!("volume {id} was just attached to instance {instance}; not destroyed")))
        }
    }
}
