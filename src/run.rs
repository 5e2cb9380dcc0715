//! The edge: runs one parsed [`Invocation`]. Picks the reporter, loads the config,
//! resolves the settings, dispatches to the command, and renders the error for
//! `main` to print and map to an exit code. The only module that knows both the
//! command line and the commands.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::cli::{Command, Invocation, OutputMode};
use crate::commands::{self, Ctx};
use crate::error::Error;
use crate::report::{Event, Human, Json, Quiet, Reporter};
use crate::transport::SshOptions;

pub fn reporter(output: OutputMode) -> Arc<dyn Reporter> {
    match output {
        OutputMode::Human => Arc::new(Human::new()),
        OutputMode::Json => Arc::new(Json::new()),
        OutputMode::Quiet => Arc::new(Quiet),
    }
}

pub async fn run(invocation: Invocation, reporter: Arc<dyn Reporter>) -> Result<(), Error> {
    // `launch` writes the fly.toml the other commands read.
    if let Command::Launch { template, name, region, dir } = &invocation.command {
        let opts = commands::launch::LaunchOptions {
            template: template.clone(),
            name: name.clone(),
            region: region.clone(),
            dir: dir.clone(),
        };
        return commands::launch::run(&opts, reporter.as_ref());
    }
    // So does `init`, next to where the config would be.
    if let Command::Init { name, region } = &invocation.command {
        let opts = commands::init::InitOptions {
            name: name.clone(),
            region: region.clone(),
            config: invocation.config.clone(),
        };
        return commands::init::run(&opts, reporter.as_ref());
    }
    let loaded = crate::config::load(&invocation.config)?;
    let ssh = SshOptions {
        accept_new_host_keys: invocation.accept_new_host_keys,
        config_file: invocation.ssh_config.clone(),
    };
    let ctx = Ctx::new(loaded.config, invocation.config.clone(), reporter, ssh, invocation.overrides);
    if matches!(invocation.command, Command::ConfigValidate) {
        commands::config::validate(&ctx, &loaded.warnings);
        return Ok(());
    }
    let deploys = matches!(invocation.command, Command::Deploy { .. });
    for warning in loaded.warnings.iter().filter(|w| deploys || !w.deploy_only) {
        ctx.event(Event::Warning { message: format!("{}:{warning}", invocation.config.display()) });
    }
    let result = dispatch(&ctx, invocation.command).await;
    ctx.close().await;
    result
}

async fn dispatch(ctx: &Ctx, command: Command) -> Result<(), Error> {
    use commands::{backups, build, deploy, destroy, inspect, lock, maintenance, pg, regions, secrets, volumes};
    match command {
        Command::ReleaseBuild { version, output } => build::run(ctx, version, output).await,
        Command::Deploy { version, release, dry_run } => {
            deploy::deploy(ctx, deploy::DeployOptions { version, release, dry_run }).await
        }
        Command::Rollback { version, dry_run, restore_backup, yes, force } => {
            deploy::rollback(ctx, deploy::RollbackOptions { version, dry_run, restore_backup, yes, force }).await
        }
        Command::Migrate { version } => deploy::migrate(ctx, version).await,
        Command::Restart => {
            let fleet = ctx.fleet()?;
            ctx.engine(&fleet).run(crate::deploy::Operation::Restart { command: "restart".into() }).await
        }
        Command::Exec { instance, region, command, tty } => {
            commands::exec::run(ctx, commands::exec::ExecOptions { instance, region, command, tty }).await
        }
        Command::Doctor => commands::doctor::run(ctx).await,
        Command::BackupsList => backups::list(ctx).await,
        Command::BackupsCreate => backups::create(ctx).await,
        Command::BackupsRestore { id, yes } => backups::restore(ctx, &id, yes).await,
        Command::Status { watch } => inspect::status(ctx, watch).await,
        Command::Releases => inspect::releases(ctx).await,
        Command::Logs { region, instance, lines, follow } => {
            inspect::logs(ctx, inspect::LogsOptions { region, instance, lines, follow }).await
        }
        Command::RegionsList => regions::list(ctx).await,
        Command::RegionsAdd { name, hosts, count } => regions::add(ctx, &name, hosts, count).await,
        Command::RegionsRemove { name, yes } => regions::remove(ctx, &name, yes).await,
        Command::Scale { counts, region, yes, dry_run } => {
            regions::scale(ctx, regions::ScaleOptions { counts, region, yes, dry_run }).await
        }
        Command::SecretsSet { pairs, stage } => secrets::set(ctx, &pairs, stage).await,
        Command::SecretsUnset { keys, stage } => secrets::unset(ctx, &keys, stage).await,
        Command::SecretsList => secrets::list(ctx).await,
        Command::VolumesCreate { name, region, size, host } => {
            volumes::create(ctx, volumes::CreateOptions { name, region, size_gb: size, host }).await
        }
        Command::VolumesList => volumes::list(ctx).await,
        Command::VolumesDestroy { id, yes } => volumes::destroy(ctx, &id, yes).await,
        Command::PgStatus => pg::status(ctx).await,
        Command::PgConnectUrl { region } => pg::connect_url(ctx, &region).await,
        Command::LockStatus => lock::status(ctx).await,
        Command::LockRelease => lock::release(ctx).await,
        Command::Maintenance { on } => maintenance::run(ctx, on).await,
        Command::Destroy { yes } => destroy::run(ctx, yes).await,
        Command::ConfigValidate | Command::Launch { .. } | Command::Init { .. } | Command::Agent(_) => Ok(()),
        Command::ConfigShow => commands::config::show(ctx),
    }
}

/// The error as the user sees it: the message, each cause, then a hint.
pub fn render_error(error: &Error) -> String {
    let mut text = format!("error: {error}");
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            let _ = write!(text, "\n  caused by: {line}");
        }
        source = cause.source();
    }
    if let Some(hint) = error.hint() {
        let _ = write!(text, "\n  hint: {hint}");
    }
    text
}
