//! PostgreSQL backups on this host, under the app's `backups/`: `pg_dump -Fc`,
//! verified with `pg_restore --list` before it counts, its sha256 and size recorded
//! beside it, the newest `keep` kept. The password reaches the tools only through a
//! 0600 pgpass file in a private scratch directory, never an argument.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tokio::io::AsyncReadExt;

use crate::postgres::{Backup, Database};

use super::files::{write_atomic, App};
use super::procs::{Ended, Reaper};

fn dir(app: &App) -> PathBuf {
    app.dir.join("backups")
}

/// Runs a PostgreSQL tool with the pgpass file; its stderr when it fails.
async fn tool(
    reaper: &Reaper,
    program: &str,
    args: &[String],
    pgpass: &Path,
    path: Option<&str>,
) -> Result<(), String> {
    let mut env = super::ops::helper_env(&BTreeMap::new());
    if let Some(path) = path {
        env.insert("PATH".into(), path.to_string());
    }
    env.insert("PGPASSFILE".into(), pgpass.display().to_string());
    env.insert("PGCONNECT_TIMEOUT".into(), "10".into());
    let mut command = Command::new(program);
    command.args(args).env_clear().envs(&env).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let (mut child, ended) = reaper.spawn(&mut command).map_err(|e| format!("`{program}` cannot run: {e}"))?;
    let mut stderr = String::new();
    if let Some(err) = child.stderr.take() {
        if let Ok(mut err) = tokio::process::ChildStderr::from_std(err) {
            let _ = err.read_to_string(&mut stderr).await;
        }
    }
    match ended.await.unwrap_or(Ended::Unknown) {
        Ended::Code(0) => Ok(()),
        other => Err(format!("{program} failed ({}): {}", other.describe(), stderr.trim())),
    }
}

/// A private directory with the pgpass file, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(app: &App, db: &Database) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let path = app.dir.join(format!(".pg-{}-{}", std::process::id(), crate::host::now_ms()));
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&path)?;
        write_atomic(&path.join("pgpass"), db.pgpass().as_bytes(), 0o600)?;
        Ok(Scratch(path))
    }

    fn pgpass(&self) -> PathBuf {
        self.0.join("pgpass")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn connection(db: &Database) -> Vec<String> {
    vec!["-h".into(), db.host.clone(), "-p".into(), db.port.to_string(), "-U".into(), db.user.clone()]
}

/// Dumps `db` and records it as `meta` (size and sha256 filled in).
pub async fn create(
    reaper: &Reaper,
    app: &App,
    db: &Database,
    mut meta: Backup,
    keep: usize,
    path: Option<&str>,
) -> Result<Backup, String> {
    let dir = dir(app);
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let scratch = Scratch::new(app, db).map_err(|e| e.to_string())?;
    let part = dir.join(format!("{}.dump.part", meta.id));
    let mut args = vec!["-Fc".to_string()];
    args.extend(connection(db));
    args.extend(["-d".into(), db.name.clone(), "-f".into(), part.display().to_string()]);
    if let Err(e) = tool(reaper, "pg_dump", &args, &scratch.pgpass(), path).await {
        let _ = fs::remove_file(&part);
        return Err(e);
    }
    let list = vec!["--list".to_string(), part.display().to_string()];
    if let Err(e) = tool(reaper, "pg_restore", &list, &scratch.pgpass(), path).await {
        let _ = fs::remove_file(&part);
        return Err(format!("the dump does not verify: {e}"));
    }
    meta.sha256 = sha256_off_thread(&part).await?;
    meta.size = fs::metadata(&part).map_err(|e| e.to_string())?.len();
    fs::rename(&part, dir.join(format!("{}.dump", meta.id))).map_err(|e| e.to_string())?;
    register(app, &meta, keep).map_err(|e| e.to_string())?;
    Ok(meta)
}

/// Records a dump already at `backups/<id>.dump` and keeps the newest `keep`.
pub fn register(app: &App, backup: &Backup, keep: usize) -> std::io::Result<()> {
    let dir = dir(app);
    if !dir.join(format!("{}.dump", backup.id)).is_file() {
        return Err(std::io::Error::other(format!("backup {} was not uploaded", backup.id)));
    }
    write_atomic(
        &dir.join(format!("{}.json", backup.id)),
        &serde_json::to_vec(backup).map_err(std::io::Error::other)?,
        0o600,
    )?;
    let all = list(app);
    for old in all.iter().take(all.len().saturating_sub(keep)) {
        let _ = fs::remove_file(dir.join(format!("{}.json", old.id)));
        let _ = fs::remove_file(dir.join(format!("{}.dump", old.id)));
    }
    Ok(())
}

/// Every backup's metadata, oldest first.
pub fn list(app: &App) -> Vec<Backup> {
    let mut backups: Vec<Backup> = fs::read_dir(dir(app))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_str(&fs::read_to_string(e.path()).ok()?).ok())
        .collect();
    backups.sort_by(|a, b| a.id.cmp(&b.id));
    backups
}

/// Restores `backup` into `db` in one transaction, after checking the dump's sha256.
pub async fn restore(
    reaper: &Reaper,
    app: &App,
    db: &Database,
    backup: &Backup,
    path: Option<&str>,
) -> Result<(), String> {
    let dump = dir(app).join(format!("{}.dump", backup.id));
    if !dump.is_file() {
        return Err(format!("backup {} is not on this host", backup.id));
    }
    if sha256_off_thread(&dump).await? != backup.sha256 {
        return Err(format!("backup {} does not match its sha256", backup.id));
    }
    let scratch = Scratch::new(app, db).map_err(|e| e.to_string())?;
    let mut args =
        vec!["--clean".to_string(), "--if-exists".into(), "--single-transaction".into(), "--no-owner".into()];
    args.extend(connection(db));
    args.extend(["-d".into(), db.name.clone(), dump.display().to_string()]);
    tool(reaper, "pg_restore", &args, &scratch.pgpass(), path).await
}

/// The sha256 of a (possibly large) file, on a blocking thread: the agent's own thread
/// keeps watching instances meanwhile.
async fn sha256_off_thread(path: &Path) -> Result<String, String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || crate::release::sha256_file(&path).map_err(|e| e.to_string()))
        .await
        .map_err(|e| e.to_string())?
}
