//! One app's directory on a host (the layout in the README), as the agent reads and
//! writes it: releases, instance records, volumes, history, secrets, the deploy lock.
//! Every file ferry writes is written aside and renamed into place; history, secrets,
//! logs and instance environments are private to the account (0600).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::host::lock::{Held, Holder, STALE_AFTER};
#[cfg(test)]
use crate::host::Runtime;
use crate::host::{
    Finished, HostState, InstalledRelease, InstanceRecord, InstanceState, LockReply, Volume, VolumeCreated,
};

/// The secrets file as a start read it: its text, `None` when there was none. An
/// instance keeps the snapshot it started with, so a restart runs it exactly as it ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot(pub Option<String>);

impl Snapshot {
    pub fn values(&self) -> BTreeMap<String, String> {
        self.0.as_deref().unwrap_or_default().lines().filter_map(parse_secret_line).collect()
    }

    /// As the host reports its secrets: the file's sha256, empty without a file.
    pub fn digest(&self) -> String {
        self.0.as_ref().map(|text| format!("{:x}", Sha256::digest(text.as_bytes()))).unwrap_or_default()
    }
}

/// The file in every installed release that says what it is.
pub const RELEASE_FILE: &str = ".ferry-release";

/// An app's directory on this host.
#[derive(Debug, Clone)]
pub struct App {
    pub dir: PathBuf,
}

/// Writes `data` to `path` atomically (aside, then renamed), with `mode`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    // A fresh file, never one already there (a link someone planted in a shared
    // directory is not followed: creation fails instead).
    let _ = fs::remove_file(&tmp);
    let written = (|| {
        let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        file.write_all(data)?;
        file.sync_data()?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Opens a file for appending, private to the account: created 0600, and made 0600 if
/// an older ferry left it readable to others.
pub fn open_private_log(path: &Path) -> io::Result<fs::File> {
    let file = fs::OpenOptions::new().append(true).create(true).mode(0o600).open(path)?;
    if file.metadata()?.permissions().mode() & 0o077 != 0 {
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// Appends one line to a file private to the account.
fn append_private(path: &Path, line: &str) -> io::Result<()> {
    let mut file = open_private_log(path)?;
    file.write_all(line.as_bytes())?;
    if !line.ends_with('\n') {
        file.write_all(b"\n")?;
    }
    Ok(())
}

/// Removes a tree, making read-only directories of it writable first (releases are
/// kept read-only while they are installed).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(meta) if !meta.is_dir() => return fs::remove_file(path),
        Ok(_) => {}
    }
    make_writable(path)?;
    fs::remove_dir_all(path)
}

fn make_writable(dir: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Ok(());
    }
    if meta.permissions().mode() & 0o200 == 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(meta.permissions().mode() | 0o700))?;
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            make_writable(&entry.path())?;
        }
    }
    Ok(())
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn age_secs(path: &Path) -> Option<u64> {
    let modified = fs::metadata(path).ok()?.modified().ok()?;
    Some(SystemTime::now().duration_since(modified).unwrap_or(Duration::ZERO).as_secs())
}

impl App {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn releases(&self) -> PathBuf {
        self.dir.join("releases")
    }

    pub fn release(&self, version: &str) -> PathBuf {
        self.releases().join(version)
    }

    pub fn artifacts(&self) -> PathBuf {
        self.dir.join("artifacts")
    }

    pub fn artifact(&self, sha256: &str) -> PathBuf {
        self.artifacts().join(format!("{sha256}.tar.gz"))
    }

    pub fn instances(&self) -> PathBuf {
        self.dir.join("instances")
    }

    pub fn instance(&self, id: &str) -> PathBuf {
        self.instances().join(id)
    }

    fn lock(&self) -> PathBuf {
        self.dir.join("lock")
    }

    fn history(&self) -> PathBuf {
        self.dir.join("history.jsonl")
    }

    fn secrets_file(&self) -> PathBuf {
        self.dir.join("secrets.env")
    }

    fn volumes(&self) -> PathBuf {
        self.dir.join("volumes")
    }

    /// Creates the layout's directories.
    pub fn create(&self) -> io::Result<()> {
        for dir in [self.artifacts(), self.releases(), self.instances()] {
            fs::create_dir_all(dir)?;
        }
        Ok(())
    }

    /// The release installed as `version`, when it is.
    pub fn installed(&self, version: &str) -> Option<InstalledRelease> {
        let text = fs::read_to_string(self.release(version).join(RELEASE_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Every instance record on this host (records that do not parse are skipped and
    /// reported in the second list).
    pub fn records(&self) -> (Vec<InstanceRecord>, Vec<String>) {
        let (mut records, mut broken) = (Vec::new(), Vec::new());
        for entry in fs::read_dir(self.instances()).into_iter().flatten().flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            match fs::read_to_string(entry.path().join("instance.json")).map(|t| serde_json::from_str(&t)) {
                Ok(Ok(record)) => records.push(record),
                Ok(Err(_)) => broken.push(id),
                Err(_) => {}
            }
        }
        records.sort_by(|a: &InstanceRecord, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        (records, broken)
    }

    pub fn write_record(&self, record: &InstanceRecord) -> io::Result<()> {
        let dir = self.instance(&record.id);
        fs::create_dir_all(&dir)?;
        let json = serde_json::to_vec(record).map_err(io::Error::other)?;
        write_atomic(&dir.join("instance.json"), &json, 0o600)
    }

    /// What this host holds, with `instances` telling which records are alive. With
    /// `own_lock`, the lock this very request took is not reported.
    pub fn observe(&self, instances: impl Fn(&InstanceRecord) -> InstanceState, own_lock: bool) -> HostState {
        let mut state = HostState::default();
        for entry in fs::read_dir(self.releases()).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                state.releases.extend(self.installed(&name));
            }
        }
        state.releases.sort_by_key(|r| r.installed_at);
        state.instances = self.records().0.iter().map(instances).collect();
        for entry in fs::read_dir(self.volumes()).into_iter().flatten().flatten() {
            if let Ok(Ok(volume)) =
                fs::read_to_string(entry.path().join("volume.json")).map(|t| serde_json::from_str(&t))
            {
                state.volumes.push(volume);
            }
        }
        if !own_lock {
            state.lock = self.held();
        }
        state.current = self.current();
        state.beam = self.dir.join("current").join("releases").join("start_erl.data").is_file();
        state.secrets = self.secrets_digest();
        state
    }

    /// `FERRY_PEERS_FILE`: the node names of the app's running instances, one per line.
    pub fn peers_file(&self) -> PathBuf {
        self.dir.join("peers")
    }

    /// The version `current` points at.
    pub fn current(&self) -> Option<String> {
        let link = fs::read_link(self.dir.join("current")).ok()?;
        Some(link.file_name()?.to_string_lossy().into_owned())
    }

    fn held(&self) -> Option<Held> {
        let lock = self.lock();
        if !lock.is_dir() {
            return None;
        }
        let holder_file = lock.join("holder.json");
        let holder = fs::read_to_string(&holder_file).ok().and_then(|t| serde_json::from_str(&t).ok());
        let age = age_secs(&holder_file).or_else(|| age_secs(&lock)).unwrap_or(0);
        Some(Held { holder, age_secs: age })
    }

    /// Takes the lock: built aside with its holder, then renamed into place, so it never
    /// exists without a holder, and the rename fails if a lock is already there.
    pub fn lock_acquire(&self, holder: &Holder, observe: impl Fn(bool) -> HostState) -> io::Result<LockReply> {
        fs::create_dir_all(&self.dir)?;
        if self.place_lock(holder)? {
            return Ok(LockReply::Acquired(Box::new(observe(true))));
        }
        Ok(LockReply::Held(self.held().unwrap_or(Held { holder: None, age_secs: 0 })))
    }

    fn place_lock(&self, holder: &Holder) -> io::Result<bool> {
        let tmp = self.dir.join(format!("lock.new.{}", std::process::id()));
        let _ = remove_tree(&tmp);
        fs::create_dir(&tmp)?;
        let written = fs::write(tmp.join("holder.json"), serde_json::to_vec(holder).map_err(io::Error::other)?);
        if let Err(e) = written {
            let _ = remove_tree(&tmp);
            return Err(e);
        }
        if fs::rename(&tmp, self.lock()).is_ok() {
            return Ok(true);
        }
        let _ = remove_tree(&tmp);
        Ok(false)
    }

    /// Replaces the lock only if it is still the one judged stale (`stale`: its token).
    pub fn lock_takeover(
        &self,
        stale: Option<&str>,
        holder: &Holder,
        observe: impl Fn(bool) -> HostState,
    ) -> io::Result<LockReply> {
        let current = self.held().and_then(|h| h.holder).map(|h| h.token);
        if current.is_none() || stale.is_none() || current.as_deref() == stale {
            let aside = self.dir.join(format!("lock.stale.{}", std::process::id()));
            if fs::rename(self.lock(), &aside).is_ok() {
                let _ = remove_tree(&aside);
            }
        }
        if self.place_lock(holder)? {
            Ok(LockReply::Acquired(Box::new(observe(true))))
        } else {
            Ok(LockReply::Lost)
        }
    }

    fn holds(&self, token: &str) -> bool {
        self.held().and_then(|h| h.holder).is_some_and(|h| h.token == token)
    }

    /// Refreshes the lease; false when the lock is no longer `token`'s.
    pub fn lock_refresh(&self, token: &str) -> bool {
        if !self.holds(token) {
            return false;
        }
        let holder = self.lock().join("holder.json");
        fs::File::options().append(true).open(&holder).and_then(|f| f.set_modified(SystemTime::now())).is_ok()
    }

    /// Removes the lock if `token` holds it; with `None`, whatever lock is there.
    pub fn lock_release(&self, token: Option<&str>) -> io::Result<()> {
        if token.is_none_or(|t| self.holds(t)) {
            remove_tree(&self.lock())?;
        }
        Ok(())
    }

    /// Appends a history record, with every secret value in it redacted (an error may
    /// quote a release_command's or an instance's output).
    pub fn append_history(&self, line: &str) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let redactor = crate::redact::Redactor::new(&self.secrets(), &BTreeMap::new());
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(mut record) if !redactor.is_empty() => {
                redactor.redact_json(&mut record);
                append_private(&self.history(), &record.to_string())
            }
            _ => append_private(&self.history(), line),
        }
    }

    pub fn read_history(&self) -> String {
        fs::read_to_string(self.history()).unwrap_or_default()
    }

    /// The steps after a rollout: mark `current`, append `history`, prune, and with
    /// `token` release the lock last. A failed step is reported by its absence.
    pub fn finish(
        &self,
        token: Option<&str>,
        current: Option<&str>,
        history: Option<&str>,
        prune: &[String],
    ) -> Finished {
        let mut done = Finished::default();
        let mut errors = Vec::new();
        if let Some(version) = current {
            match self.mark_current(version) {
                Ok(()) => done.current = true,
                Err(e) => errors.push(format!("marking {version} current: {e}")),
            }
        }
        if let Some(line) = history {
            match self.append_history(line) {
                Ok(()) => done.history = true,
                Err(e) => errors.push(format!("recording history: {e}")),
            }
        }
        for version in prune {
            match self.remove_release(version) {
                Ok(()) => done.pruned.push(version.clone()),
                Err(e) => errors.push(format!("pruning {version}: {e}")),
            }
        }
        if let Some(token) = token {
            if let Err(e) = self.lock_release(Some(token)) {
                errors.push(format!("releasing the lock: {e}"));
            }
        }
        if !errors.is_empty() {
            done.error = Some(errors.join("; "));
        }
        done
    }

    /// Points `current` at an installed release, atomically.
    pub fn mark_current(&self, version: &str) -> io::Result<()> {
        if self.installed(version).is_none() {
            return Err(io::Error::other(format!("release {version} is not installed")));
        }
        let tmp = self.dir.join(format!("current.tmp.{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("releases").join(version), &tmp)?;
        fs::rename(&tmp, self.dir.join("current"))
    }

    /// Removes an installed release and its artifact. Moved out of sight first, so a
    /// removal cut short never leaves a half release that still claims to be installed.
    pub fn remove_release(&self, version: &str) -> io::Result<()> {
        let release = self.release(version);
        let sha = self.installed(version).map(|r| r.sha256);
        let gone = self.releases().join(format!(".gone-{version}-{}", std::process::id()));
        if fs::rename(&release, &gone).is_ok() {
            remove_tree(&gone)?;
        }
        if let Some(sha) = sha {
            match fs::remove_file(self.artifact(&sha)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        self.remove_as_ran(version)
    }

    /// How `version`'s instances of process group `group` ran when it was last made
    /// current (see [`super::supervisor::AsRan`]). The default group's file keeps the
    /// name it had before process groups.
    pub fn as_ran_file(&self, version: &str, group: &str) -> PathBuf {
        let launches = self.dir.join("launches");
        if group == crate::config::DEFAULT_GROUP {
            launches.join(format!("{version}.json"))
        } else {
            launches.join(group).join(format!("{version}.json"))
        }
    }

    /// Removes every as-ran record of `version`, of every process group.
    pub fn remove_as_ran(&self, version: &str) -> io::Result<()> {
        let mut files = vec![self.as_ran_file(version, crate::config::DEFAULT_GROUP)];
        if let Ok(entries) = fs::read_dir(self.dir.join("launches")) {
            let groups = entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir()));
            files.extend(groups.map(|e| e.path().join(format!("{version}.json"))));
        }
        for file in files {
            match fs::remove_file(file) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// The sha256 of the secrets file, when there is one.
    pub fn secrets_digest(&self) -> Option<String> {
        fs::read(self.secrets_file()).ok().map(|bytes| format!("{:x}", Sha256::digest(bytes)))
    }

    pub fn secrets_snapshot(&self) -> Snapshot {
        Snapshot(fs::read_to_string(self.secrets_file()).ok())
    }

    /// The stored secrets, `KEY=base64` lines.
    pub fn secrets_raw(&self) -> String {
        fs::read_to_string(self.secrets_file()).unwrap_or_default()
    }

    /// Replaces the secrets file with `raw`; no secrets at all means no file, so an
    /// app that never had any and one whose last secret was unset look the same.
    pub fn secrets_replace(&self, raw: &str) -> io::Result<()> {
        if raw.trim().is_empty() {
            return match fs::remove_file(self.secrets_file()) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        fs::create_dir_all(&self.dir)?;
        write_atomic(&self.secrets_file(), raw.as_bytes(), 0o600)
    }

    /// Replaces (or adds) secrets: drops `keys`, then appends `lines` (`KEY=base64`).
    pub fn secrets_set(&self, keys: &[String], lines: &str) -> io::Result<()> {
        for line in lines.lines() {
            if set_time(line).is_some() {
                continue;
            }
            if parse_secret_line(line).is_none_or(|(_, value)| value.contains('\0')) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a secret is not base64 of UTF-8 text without NUL bytes; nothing was stored",
                ));
            }
        }
        let mut kept: String = self
            .secrets_raw()
            .lines()
            .filter(|line| {
                let key = set_time(line).map(|(key, _)| key).or_else(|| line.split_once('=').map(|(key, _)| key));
                !keys.iter().any(|k| key == Some(k.as_str()))
            })
            .flat_map(|line| [line, "\n"])
            .collect();
        kept.push_str(lines);
        self.secrets_replace(&kept)
    }

    /// The secrets, decoded (see [`parse_secret_line`]).
    pub fn secrets(&self) -> BTreeMap<String, String> {
        self.secrets_snapshot().values()
    }

    /// `(name, when it was set)` of every secret: never anything derived from the value,
    /// which a digest of a short value would give away.
    pub fn secrets_list(&self) -> Vec<(String, String)> {
        let raw = self.secrets_raw();
        let times: BTreeMap<&str, u64> = raw.lines().filter_map(set_time).collect();
        self.secrets()
            .into_keys()
            .map(|key| {
                let when = times.get(key.as_str()).map_or_else(
                    || "-".to_string(),
                    |secs| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(*secs)).to_string(),
                );
                (key, when)
            })
            .collect()
    }

    pub fn secret_get(&self, key: &str) -> Option<String> {
        self.secrets().remove(key)
    }

    /// Creates a volume after checking its filesystem has the room.
    pub fn volume_create(&self, volume: &Volume) -> io::Result<VolumeCreated> {
        fs::create_dir_all(self.volumes())?;
        let stat = rustix::fs::statvfs(self.volumes()).map_err(io::Error::from)?;
        let free_kib = stat.f_bavail.saturating_mul(stat.f_frsize) / 1024;
        if free_kib < volume.size_gb.saturating_mul(1024 * 1024) {
            return Ok(VolumeCreated::NoSpace(free_kib));
        }
        let dir = self.volumes().join(&volume.id);
        fs::create_dir_all(dir.join("data"))?;
        write_atomic(&dir.join("volume.json"), &serde_json::to_vec(volume).map_err(io::Error::other)?, 0o644)?;
        Ok(VolumeCreated::Created)
    }

    fn read_volume(&self, id: &str) -> io::Result<Volume> {
        let text = fs::read_to_string(self.volumes().join(id).join("volume.json"))?;
        serde_json::from_str(&text).map_err(io::Error::other)
    }

    /// Removes a volume unless an instance holds it (`Err(instance)`).
    pub fn volume_destroy(&self, id: &str) -> io::Result<Result<(), String>> {
        let volume = self.read_volume(id).map_err(|_| io::Error::other(format!("no volume {id} here")))?;
        if let Some(instance) = volume.attached {
            return Ok(Err(instance));
        }
        remove_tree(&self.volumes().join(id))?;
        Ok(Ok(()))
    }

    /// Binds `instance` to the volume named `name` it already holds, else to a free
    /// one; links it as `instances/<id>/mounts/<destination>` and returns the data path.
    pub fn volume_attach(&self, instance: &str, name: &str, destination: &str) -> io::Result<String> {
        let mut pick: Option<Volume> = None;
        for entry in fs::read_dir(self.volumes()).into_iter().flatten().flatten() {
            let Ok(volume) = self.read_volume(&entry.file_name().to_string_lossy()) else { continue };
            if volume.name != name {
                continue;
            }
            if volume.attached.as_deref() == Some(instance) {
                pick = Some(volume);
                break;
            }
            if pick.is_none() && volume.attached.is_none() {
                pick = Some(volume);
            }
        }
        let Some(mut volume) = pick else {
            return Err(io::Error::other(format!("no free volume named {name} on this host")));
        };
        volume.attached = Some(instance.to_string());
        let dir = self.volumes().join(&volume.id);
        write_atomic(&dir.join("volume.json"), &serde_json::to_vec(&volume).map_err(io::Error::other)?, 0o644)?;
        let data = dir.join("data");
        let mounts = self.instance(instance).join("mounts");
        fs::create_dir_all(&mounts)?;
        let link_name: String =
            destination.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
        let link = mounts.join(link_name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&data, &link)?;
        Ok(data.display().to_string())
    }

    /// Frees the volumes `instance` held (their data stays for the next instance).
    pub fn volumes_release(&self, instance: &str) -> io::Result<()> {
        for entry in fs::read_dir(self.volumes()).into_iter().flatten().flatten() {
            let Ok(mut volume) = self.read_volume(&entry.file_name().to_string_lossy()) else { continue };
            if volume.attached.as_deref() == Some(instance) {
                volume.attached = None;
                let json = serde_json::to_vec(&volume).map_err(io::Error::other)?;
                write_atomic(&entry.path().join("volume.json"), &json, 0o644)?;
            }
        }
        Ok(())
    }

    /// Removes the whole app directory.
    pub fn destroy(&self) -> io::Result<()> {
        remove_tree(&self.dir)
    }

    /// Whether the lock has not been refreshed for longer than a lease lasts.
    pub fn lock_is_stale(&self) -> bool {
        self.held().is_some_and(|h| h.age_secs >= STALE_AFTER.as_secs())
    }
}

/// The TCP ports something listens on, on this machine.
/// One secret of the secrets file: a `KEY=base64` line. A value that is not base64 or
/// not UTF-8 is skipped rather than changed; `#` lines are not secrets.
fn parse_secret_line(line: &str) -> Option<(String, String)> {
    if line.starts_with('#') {
        return None;
    }
    let (key, value) = line.split_once('=')?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(value).ok()?;
    Some((key.to_string(), String::from_utf8(bytes).ok()?))
}

/// When a secret was set: a `#set KEY <unix seconds>` line beside its value (a line
/// without `=`, which agents that do not know it pass over).
fn set_time(line: &str) -> Option<(&str, u64)> {
    let mut words = line.strip_prefix("#set ")?.split(' ');
    let (key, secs) = (words.next()?, words.next()?.parse().ok()?);
    words.next().is_none().then_some((key, secs))
}

/// Who listens on TCP `port` here, for a message: `pid 4242 (nginx)`, or the account
/// that owns the socket when its process is not visible to this one. `None` when
/// nothing is found listening.
pub fn holder_of(port: u16) -> Option<String> {
    let mut sockets = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(file) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1).and_then(|a| a.rsplit(':').next()).and_then(|p| u16::from_str_radix(p, 16).ok());
            if fields.get(3) == Some(&"0A") && local == Some(port) {
                if let (Some(uid), Some(inode)) = (fields.get(7), fields.get(9)) {
                    sockets.push(((*uid).to_string(), format!("socket:[{inode}]")));
                }
            }
        }
    }
    let (uid, _) = sockets.first()?.clone();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else { continue };
        let holds = fds.flatten().any(|fd| {
            fs::read_link(fd.path()).is_ok_and(|target| sockets.iter().any(|(_, s)| target.as_os_str() == s.as_str()))
        });
        if holds {
            let name = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            return Some(format!("pid {pid} (`{}`)", name.trim()));
        }
    }
    let account = fs::read_to_string("/etc/passwd").ok().and_then(|passwd| {
        passwd.lines().find_map(|l| {
            let fields: Vec<&str> = l.split(':').collect();
            (fields.get(2) == Some(&uid.as_str())).then(|| fields[0].to_string())
        })
    });
    Some(format!("a process of the account `{}`", account.unwrap_or_else(|| format!("uid {uid}"))))
}

pub fn listening_ports() -> Vec<u16> {
    let mut ports = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(file) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) == Some(&"0A") {
                if let Some(port) = fields.get(1).and_then(|a| a.rsplit(':').next()) {
                    ports.extend(u16::from_str_radix(port, 16).ok());
                }
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Seconds since the epoch, for `installed_at`-style stamps in milliseconds.
pub fn now_ms() -> u64 {
    now_secs() * 1000
        + u64::from(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.subsec_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> (tempfile::TempDir, App) {
        let dir = tempfile::tempdir().unwrap();
        let app = App::new(dir.path().join("hello"));
        app.create().unwrap();
        (dir, app)
    }

    fn state(app: &App) -> HostState {
        app.observe(
            |r| InstanceState { record: r.clone(), alive: false, runtime: Runtime::default(), routed: false },
            false,
        )
    }

    #[test]
    fn the_lock_is_taken_once_refreshed_and_released_by_its_holder_only() {
        let (_dir, app) = app();
        let me = Holder::me("deploy");
        let mut other = Holder::me("deploy");
        other.token = "other".into();
        assert!(matches!(app.lock_acquire(&me, |_| HostState::default()).unwrap(), LockReply::Acquired(_)));
        assert!(matches!(app.lock_acquire(&other, |_| HostState::default()).unwrap(), LockReply::Held(_)));
        assert!(app.lock_refresh(&me.token));
        assert!(!app.lock_refresh(&other.token));
        app.lock_release(Some(&other.token)).unwrap();
        assert!(state(&app).lock.is_some(), "another token does not release it");
        assert!(matches!(
            app.lock_takeover(Some("not it"), &other, |_| HostState::default()).unwrap(),
            LockReply::Lost
        ));
        assert!(matches!(
            app.lock_takeover(Some(&me.token), &other, |_| HostState::default()).unwrap(),
            LockReply::Acquired(_)
        ));
        assert!(!app.lock_refresh(&me.token), "taken over");
        app.lock_release(Some(&other.token)).unwrap();
        assert!(state(&app).lock.is_none());
    }

    #[test]
    fn history_and_secrets_are_private() {
        let (_dir, app) = app();
        app.append_history("{}").unwrap();
        app.secrets_set(&["A".into()], "A=aGk=\n").unwrap();
        for file in ["history.jsonl", "secrets.env"] {
            let mode = fs::metadata(app.dir.join(file)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{file}");
        }
        assert_eq!(app.secret_get("A").as_deref(), Some("hi"));
        app.secrets_set(&["A".into()], "A=aG8=\nB=eA==\n").unwrap();
        assert_eq!(app.secrets().len(), 2);
        assert_eq!(app.secret_get("A").as_deref(), Some("ho"), "a key set again replaces its value");
    }

    #[test]
    fn current_points_only_at_an_installed_release() {
        let (_dir, app) = app();
        assert!(app.mark_current("v1").is_err());
        fs::create_dir_all(app.release("v1")).unwrap();
        let release = InstalledRelease { version: "v1".into(), sha256: "aa".into(), installed_at: 1 };
        fs::write(app.release("v1").join(RELEASE_FILE), serde_json::to_vec(&release).unwrap()).unwrap();
        app.mark_current("v1").unwrap();
        assert_eq!(app.current().as_deref(), Some("v1"));
        let done = app.finish(None, None, Some("{}"), &["v1".into()]);
        assert!(done.history && done.pruned == ["v1"]);
        assert!(app.installed("v1").is_none());
    }

    #[test]
    fn volumes_bind_one_instance_and_are_freed_with_it() {
        let (_dir, app) = app();
        let volume = |id: &str| Volume {
            id: id.into(),
            name: "data".into(),
            region: "syd".into(),
            host: "h".into(),
            size_gb: 0,
            created_at: String::new(),
            attached: None,
        };
        assert_eq!(app.volume_create(&volume("vol_a")).unwrap(), VolumeCreated::Created);
        let path = app.volume_attach("i1", "data", "/data").unwrap();
        assert!(path.ends_with("vol_a/data"));
        assert!(app.volume_attach("i2", "data", "/data").is_err(), "the only volume is taken");
        assert_eq!(app.volume_destroy("vol_a").unwrap(), Err("i1".into()));
        app.volumes_release("i1").unwrap();
        assert_eq!(app.volume_destroy("vol_a").unwrap(), Ok(()));
    }
}
