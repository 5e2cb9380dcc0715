//! Runs one parsed [`Invocation`]: loads the config, picks the reporter, dispatches to
//! the command. Returns the error for `main` to print and map to an exit code.

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
        return commands::launch::run(&opts);
    }
    let loaded = crate::config::load(&invocation.config)?;
    let ctx = Ctx {
        config: Arc::new(loaded.config),
        config_path: invocation.config.clone(),
        reporter,
        json: invocation.output == OutputMode::Json,
        ssh: SshOptions {
            accept_new_host_keys: invocation.accept_new_host_keys,
            config_file: invocation.ssh_config.clone(),
        },
        interactive: std::io::IsTerminal::is_terminal(&std::io::stdin()),
    };
    if matches!(invocation.command, Command::ConfigValidate) {
        commands::config::validate(&ctx, &loaded.warnings);
        return Ok(());
    }
    for warning in &loaded.warnings {
        ctx.event(Event::Warning { message: format!("{}:{warning}", invocation.config.display()) });
    }
    let result = dispatch(&ctx, invocation.command).await;
    crate::transport::close_forwards().await;
    result
}

async fn dispatch(ctx: &Ctx, command: Command) -> Result<(), Error> {
    match command {
        Command::ReleaseBuild { version, output } => commands::build::run(ctx, version, output).await,
        Command::Deploy(opts) => commands::deploy::deploy(ctx, opts).await,
        Command::Rollback(opts) => commands::deploy::rollback(ctx, opts).await,
        Command::Migrate { version, backup, lock_wait } => {
            commands::deploy::migrate(ctx, version, backup, lock_wait).await
        }
        Command::BackupsList => commands::backups::list(ctx).await,
        Command::BackupsCreate => commands::backups::create(ctx).await,
        Command::BackupsRestore { id, yes } => commands::backups::restore(ctx, &id, yes).await,
        Command::Status => commands::inspect::status(ctx).await,
        Command::Releases => commands::inspect::releases(ctx).await,
        Command::Logs { region, instance, lines } => commands::inspect::logs(ctx, region, instance, lines).await,
        Command::RegionsList => commands::regions::list(ctx).await,
        Command::RegionsAdd { name, hosts, count } => commands::regions::add(ctx, &name, hosts, count).await,
        Command::RegionsRemove { name, yes } => commands::regions::remove(ctx, &name, yes).await,
        Command::Scale(opts) => commands::regions::scale(ctx, opts).await,
        Command::SecretsSet { pairs, stage } => {
            commands::secrets::set(ctx, commands::secrets::SetOptions { pairs, stage }).await
        }
        Command::SecretsUnset { keys, stage } => commands::secrets::unset(ctx, keys, stage).await,
        Command::SecretsList => commands::secrets::list(ctx).await,
        Command::VolumesCreate { name, region, size, host } => {
            commands::volumes::create(ctx, commands::volumes::CreateOptions { name, region, size_gb: size, host }).await
        }
        Command::VolumesList => commands::volumes::list(ctx).await,
        Command::VolumesDestroy { id, yes } => commands::volumes::destroy(ctx, &id, yes).await,
        Command::PgStatus => commands::pg::status(ctx).await,
        Command::PgConnectUrl { region } => commands::pg::connect_url(ctx, &region).await,
        Command::LockStatus => commands::lock::status(ctx).await,
        Command::LockRelease => commands::lock::release(ctx).await,
        Command::Destroy { yes } => commands::destroy::run(ctx, yes).await,
        Command::ConfigValidate | Command::Launch { .. } => Ok(()),
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
