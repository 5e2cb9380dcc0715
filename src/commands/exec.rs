//! `ferry exec` and `ferry console`: a command on an instance's host, in the
//! instance's environment and directory, with this terminal's streams.

use crate::deploy::observe;
use crate::error::Error;
use crate::host::InstanceState;

use super::Ctx;

pub struct ExecOptions {
    pub instance: Option<String>,
    pub region: Option<String>,
    pub command: Vec<String>,
    /// A terminal on the host (`console`); an empty `command` then opens the
    /// instance's console.
    pub tty: bool,
}

pub async fn run(ctx: &Ctx, opts: ExecOptions) -> Result<(), Error> {
    let fleet = ctx.fleet()?;
    if let Some(region) = opts.region.as_ref().filter(|r| !fleet.region_names().contains(r)) {
        return Err(Error::usage(format!("no region `{region}` (regions: {})", fleet.region_names().join(", "))));
    }
    let observed = observe::observe(&fleet).await?;
    let instances: Vec<&InstanceState> = fleet
        .hosts()
        .filter_map(|h| observed.get(&h.name))
        .flat_map(|s| s.instances.iter())
        .filter(|i| fleet.hosts().any(|h| h.name == i.record.host))
        .collect();
    let chosen = choose(&instances, &opts, &fleet.regions[0].name, &ctx.settings.default_group)?;
    let Some(host) = fleet.hosts().find(|h| h.name == chosen.record.host) else {
        return Err(Error::failed(format!("instance {} is on a host fly.toml no longer has", chosen.record.id)));
    };
    let code = host
        .exec_in_instance(&chosen.record.id, &opts.command, opts.tty)
        .await
        .map_err(|source| Error::Host { step: "running the command", source })?;
    if code == 255 && !host.transport.is_local() {
        // ssh's own failures end with 255 too: say so, without claiming which it was.
        ctx.warn(
            "exit code 255: the command's own, or ssh's for a connection that failed (`ferry doctor` checks the host)",
        );
    }
    match code {
        0 => Ok(()),
        code => Err(Error::Exited { code }),
    }
}

/// The instance named by `-i` (an id or a prefix only it has), else a running one of
/// `-r`'s region (or the primary), of the default process group when it has one.
fn choose<'a>(
    instances: &[&'a InstanceState],
    opts: &ExecOptions,
    primary: &str,
    default_group: &str,
) -> Result<&'a InstanceState, Error> {
    if let Some(id) = &opts.instance {
        let matching: Vec<&&InstanceState> =
            instances.iter().filter(|i| i.record.id.starts_with(id.as_str())).collect();
        return match matching.as_slice() {
            [one] if one.alive => Ok(one),
            [one] => Err(Error::Failed {
                message: format!("instance {} is not running", one.record.id),
                hint: Some("`ferry status` shows how it ended; `ferry logs -i ID` shows why".into()),
            }),
            [] => Err(Error::Usage {
                message: format!("no instance `{id}`"),
                hint: Some("`ferry status` lists the instances".into()),
            }),
            _ => Err(Error::usage(format!("`{id}` is the start of more than one instance id: give more of it"))),
        };
    }
    let region = opts.region.as_deref().unwrap_or(primary);
    let mut running: Vec<&&InstanceState> = instances.iter().filter(|i| i.alive && i.record.region == region).collect();
    running.sort_by_key(|i| (i.record.group != default_group, i.record.created_at));
    running.first().map(|i| **i).ok_or_else(|| Error::Failed {
        message: format!("no instance runs in region `{region}`"),
        hint: Some("`ferry status` shows where things stand; `ferry deploy` starts instances".into()),
    })
}
