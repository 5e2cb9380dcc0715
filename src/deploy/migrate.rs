//! The migration phase: an optional `pg_dump` first (on the release machine, verified
//! with `pg_restore --list`), the release_command run once on the primary region's
//! first host, and then the primary's WAL position, which every region with a read
//! replica waits for before its instances change. Also the backups `ferry backups`
//! takes and restores, which are the same steps.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::config::BackupRun;
use crate::error::Error;
use crate::fleet::Fleet;
use crate::host::{Env, Host, HostError};
use crate::postgres::{Backup, Database, Lsn};
use crate::report::{Event, Reporter};
use crate::settings::{ReplicaSource, Settings};
use crate::transport::{LocalTransport, Transport};

use super::rollout::{ReplayProbe, ReplicaWait, LOG_LINES};

/// How long past the release_command's limit this side waits for the host's answer:
/// the host stops the command (TERM, then KILL half a second later, then waits up to
/// 5 s for it to be reaped) and answers.
const ANSWER_GRACE: std::time::Duration = std::time::Duration::from_secs(15);

/// The release machine: the primary region's first host.
pub fn release_host(fleet: &Fleet) -> Result<&Host, Error> {
    fleet.primary().and_then(|r| r.hosts.first()).ok_or_else(|| Error::failed("the primary region has no host"))
}

/// The value of `var` as the app sees it: `[env]`, else the app's secrets.
pub async fn app_value(settings: &Settings, host: &Host, var: &str) -> Result<String, Error> {
    if let Some(value) = settings.instance.env.get(var) {
        return Ok(value.clone());
    }
    host.secret_get(var).await.map_err(|source| Error::Host { step: "reading a database URL", source })?.ok_or_else(
        || Error::Usage {
            message: format!("no `{var}` in `[env]` or in the app's secrets"),
            hint: Some(format!("`ferry secrets set {var}=-` and paste the URL")),
        },
    )
}

/// The database named by `[ferry.backup] database_url_env`, from `[env]` or secrets.
pub async fn database(settings: &Settings, host: &Host) -> Result<Database, Error> {
    let var = &settings.backup.database_url_env;
    let url = app_value(settings, host, var).await?;
    Database::from_url(var, &url).map_err(|e| Error::Usage { message: e.to_string(), hint: None })
}

/// Takes one backup on the release machine, recording which releases it sits
/// between. An error here means nothing was migrated.
pub async fn backup(
    settings: &Settings,
    reporter: &dyn Reporter,
    fleet: &Fleet,
    before: Option<String>,
    after: Option<String>,
) -> Result<Backup, Error> {
    let host = release_host(fleet)?;
    let db = database(settings, host).await?;
    let now = std::time::SystemTime::now();
    // Millisecond timestamps, so ids sort in the order the backups were taken.
    let stamp: String =
        humantime::format_rfc3339_millis(now).to_string().chars().filter(char::is_ascii_alphanumeric).collect();
    let meta = Backup {
        app: settings.app.clone(),
        id: format!("{stamp}-{}", &super::new_instance_id()[..6]),
        created_at: humantime::format_rfc3339_seconds(now).to_string(),
        database: db.describe(),
        release_before: before,
        release_after: after,
        size: 0,
        sha256: String::new(),
    };
    reporter.event(&Event::BackupStarted { host: host.name.clone(), database: db.describe() });
    let keep = settings.backup.keep;
    let taken = match settings.backup.run {
        BackupRun::Host => host.backup_create(&db, &meta, keep).await,
        BackupRun::Local => backup_here(settings, host, &db, &meta, keep).await,
    };
    let backup = taken.map_err(|source| Error::Failed {
        message: format!("the backup of `{}` failed: {}", db.describe(), crate::error::chain(&source)),
        hint: Some("nothing was migrated and no instance changed; fix the database URL or access and run again".into()),
    })?;
    reporter.event(&Event::BackupTaken {
        host: host.name.clone(),
        id: backup.id.clone(),
        database: backup.database.clone(),
        size: backup.size,
        sha256: backup.sha256.clone(),
    });
    Ok(backup)
}

/// `[ferry.backup] run = "local"`: pg_dump on this machine (the same step, through
/// the local transport), then the verified dump goes to the release machine's
/// `backups/` like any other.
async fn backup_here(
    settings: &Settings,
    host: &Host,
    db: &Database,
    meta: &Backup,
    keep: usize,
) -> Result<Backup, HostError> {
    let staging_root = settings.dir.join(".ferry").join("backups-staging");
    let staging = staging_root.join(&settings.app);
    let here = Host {
        name: "this machine".into(),
        region: String::new(),
        transport: Transport::Local(LocalTransport::new("this machine")),
        app_dir: staging.display().to_string(),
    };
    let backup = here.backup_create(db, meta, 1).await?;
    let dump = staging.join("backups").join(format!("{}.dump", backup.id));
    let sent = host.transport.upload(&dump, &format!("{}/backups/{}.dump", host.app_dir, backup.id), &|_| {}).await;
    let _ = std::fs::remove_dir_all(&staging_root);
    sent?;
    host.backup_register(&backup, keep).await?;
    Ok(backup)
}

/// Restores `backup` into `db` on the release machine; the caller holds the lock.
pub async fn restore(host: &Host, db: &Database, backup: &Backup) -> Result<(), Error> {
    host.backup_restore(db, backup).await.map_err(|source| Error::Failed {
        message: format!("restoring backup {} failed: {}", backup.id, crate::error::chain(&source)),
        hint: Some("pg_restore ran in one transaction, so the database is as it was before".into()),
    })
}

/// Runs the release_command once on the primary region's first host, streaming its
/// output; a failure carries its last lines.
pub async fn release_command(
    settings: &Settings,
    reporter: &Arc<dyn Reporter>,
    fleet: &Fleet,
    version: &str,
    command: &str,
) -> Result<(), Error> {
    let Ok(host) = release_host(fleet) else {
        return Err(Error::failed("no host in the primary region to run the release_command on"));
    };
    reporter.event(&Event::ReleaseCommandStarted { host: host.name.clone(), command: command.to_string() });
    let mut env = settings.instance.env.clone();
    for (key, value) in [
        ("RELEASE_COMMAND", "1".to_string()),
        ("FLY_PROCESS_GROUP", "fly_app_release_command".to_string()),
        ("FLY_APP_NAME", settings.app.clone()),
        ("FLY_REGION", host.region.clone()),
        ("PRIMARY_REGION", settings.primary.clone()),
        ("RELEASE_VERSION", version.to_string()),
    ] {
        env.insert(key.to_string(), value);
    }
    let tail = Arc::new(Mutex::new(Vec::<String>::new()));
    let lines = Arc::clone(&tail);
    let events = Arc::clone(reporter);
    let on_line = move |line: &str| {
        if let Ok(mut lines) = lines.lock() {
            lines.push(line.to_string());
            let excess = lines.len().saturating_sub(LOG_LINES);
            lines.drain(..excess);
        }
        events.event(&Event::ReleaseCommandOutput { line: line.to_string() });
    };
    let started = Instant::now();
    let limit = settings.migration.timeout;
    let env = Env(env);
    let running = host.run_release_command(version, command, &env, limit, &on_line);
    // The host ends the command at its limit; this side holds the same deadline (with
    // time for the host to stop it and answer), so a host that never answers cannot
    // keep the deploy, and its lock, waiting.
    let answered = match limit {
        Some(limit) => tokio::time::timeout(limit + ANSWER_GRACE, running).await,
        None => Ok(running.await),
    };
    let Ok(status) = answered else {
        reporter.event(&Event::ReleaseCommandFinished {
            host: host.name.clone(),
            success: false,
            exit_code: None,
            duration_ms: super::millis(started.elapsed()),
        });
        return Err(Error::Failed {
            message: format!(
                "release_command `{command}` timed out after {} on `{}`, and the host did not answer within {} \
                 more; no instance was changed",
                limit.map(humantime::format_duration).map_or_else(String::new, |d| d.to_string()),
                host.name,
                humantime::format_duration(ANSWER_GRACE)
            ),
            hint: Some(format!(
                "check that `{}` answers (`ferry status`); running the deploy again runs the release_command again",
                host.name
            )),
        });
    };
    let status = status.map_err(|source| Error::Host { step: "running the release_command", source })?;
    reporter.event(&Event::ReleaseCommandFinished {
        host: host.name.clone(),
        success: status.success(),
        exit_code: status.code,
        duration_ms: super::millis(started.elapsed()),
    });
    if status.success() {
        return Ok(());
    }
    let why = if status.timed_out {
        format!("timed out after {}", limit.map(humantime::format_duration).map_or_else(String::new, |d| d.to_string()))
    } else {
        match (status.code, status.signal) {
            (Some(code), _) => format!("exited with {code}"),
            (None, Some(signal)) => format!("was killed by signal {signal}"),
            (None, None) => "ended".to_string(),
        }
    };
    let last = tail.lock().map(|lines| {
        lines.iter().fold(String::new(), |mut text, l| {
            use std::fmt::Write as _;
            let _ = write!(text, "\n    | {l}");
            text
        })
    });
    let last = last.unwrap_or_default();
    Err(Error::Failed {
        message: format!(
            "release_command `{command}` {why} on `{}`; no instance was changed{}",
            host.name,
            if last.is_empty() { String::new() } else { format!("\n  its last lines:{last}") }
        ),
        hint: Some("its output is above (and in `release_command.log` on the host); fix it and deploy again, or pass `--skip-release-command`".into()),
    })
}

/// After a migration: the primary's WAL position, and for every non-primary region
/// that names its read replica, a wait for that replica to replay it. Databases are
/// reached directly on the local target and through the region's first host over SSH.
pub async fn replica_waits(settings: &Settings, fleet: &Fleet) -> Result<BTreeMap<String, ReplicaWait>, Error> {
    let mut waits = BTreeMap::new();
    let regions: Vec<_> = fleet
        .regions
        .iter()
        .filter(|r| !r.primary)
        .filter_map(|r| settings.migration.replicas.get(&r.name).map(|source| (r, source)))
        .collect();
    if regions.is_empty() {
        return Ok(waits);
    }
    let Some(primary_host) = fleet.primary().and_then(|r| r.hosts.first()) else { return Ok(waits) };
    let var = &settings.backup.database_url_env;
    let primary_url = app_value(settings, primary_host, var).await?;
    let primary_db = Database::from_url(var, &primary_url).map_err(|e| Error::usage(e.to_string()))?;
    let via = forward(primary_host, &primary_db).await?;
    let target = crate::postgres::query_text(&primary_url, via, "SELECT pg_current_wal_lsn()::text")
        .await
        .ok()
        .flatten()
        .and_then(|t| t.parse::<Lsn>().ok())
        .ok_or_else(|| Error::Failed {
            message: format!(
                "cannot read the primary's WAL position from `{}`, so replicas cannot be waited for",
                primary_db.describe()
            ),
            hint: Some("the migration ran, no instance changed; check the database and deploy again".into()),
        })?;
    for (region, source) in regions {
        let Some(host) = region.hosts.first() else { continue };
        let (url, name) = match source {
            ReplicaSource::Url(url) => (url.clone(), format!("ferry.regions.{}.replica_url", region.name)),
            ReplicaSource::Env(var) => (app_value(settings, host, var).await?, var.clone()),
        };
        let db = Database::from_url(&name, &url).map_err(|e| Error::usage(e.to_string()))?;
        let via = forward(host, &db).await?;
        waits.insert(
            region.name.clone(),
            ReplicaWait {
                replica: db.describe(),
                probe: replay_probe(url, via),
                target,
                timeout: settings.migration.replica_wait_timeout,
            },
        );
    }
    Ok(waits)
}

/// Asks the replica at `url` (through `via`) how far it has replayed.
fn replay_probe(url: String, via: Option<std::net::SocketAddr>) -> ReplayProbe {
    Arc::new(move || {
        let url = url.clone();
        Box::pin(async move {
            match crate::postgres::query_text(&url, via, "SELECT pg_last_wal_replay_lsn()::text").await? {
                Some(text) => text.parse::<Lsn>().map(Some),
                None => Ok(None),
            }
        })
    })
}

async fn forward(host: &Host, db: &Database) -> Result<Option<std::net::SocketAddr>, Error> {
    host.transport
        .forward_to(&db.host, db.port)
        .await
        .map_err(|e| Error::Host { step: "reaching the database", source: e.into() })
}
