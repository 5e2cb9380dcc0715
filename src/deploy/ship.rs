//! Shipping a release to hosts: upload it where it is missing (unpacked by the host's
//! agent as it arrives, skipped where the same sha256 is already there), verify. On
//! the local target, where every region is a directory of this machine, the release
//! is unpacked once and the other regions get hard links to it. A deploy ships in the
//! plan's waves; each host's result is reported as it comes, so a region waits only
//! for its own hosts. Also here: getting a release already deployed onto hosts that
//! joined later, and giving them the app's secrets.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::error::Error;
use crate::fleet::Fleet;
use crate::host::proto::Parcel;
use crate::host::{Host, HostError, HostState};
use crate::release::{Artifact, RawTar};
use crate::report::{Event, Reporter};
use crate::settings::Settings;

/// Hosts receiving an upload at the same time.
const UPLOADS_AT_ONCE: usize = 8;

/// One release on its way to hosts: the artifact, and what every host is sent.
pub struct Shipment<'a> {
    artifact: &'a Artifact,
    /// The plain tar stream sent instead of the artifact, when deflate saved nothing.
    raw: Option<Arc<RawTar>>,
    /// `sha256sum -c` lines every host verifies the unpacked release against.
    sums: String,
}

/// Whether `host` was observed holding this very release.
fn has(observed: &BTreeMap<String, HostState>, host: &Host, artifact: &Artifact) -> bool {
    observed
        .get(&host.name)
        .is_some_and(|s| s.releases.iter().any(|r| r.version == artifact.version && r.sha256 == artifact.sha256))
}

impl<'a> Shipment<'a> {
    /// Prepares what `hosts` will be sent; the plain tar is only made when one of them
    /// lacks the release.
    pub async fn prepare<'h>(
        settings: &Settings,
        artifact: &'a Artifact,
        observed: &BTreeMap<String, HostState>,
        mut hosts: impl Iterator<Item = &'h Host>,
    ) -> Shipment<'a> {
        let raw = if hosts.any(|h| !has(observed, h, artifact)) {
            raw_stream(settings.build_dir(), settings.kept_archive(&artifact.version), artifact).await
        } else {
            None
        };
        Shipment { artifact, raw, sums: artifact.manifest.sha256sum_lines() }
    }

    /// Uploads (unless present) and unpacks the release on `hosts`, in parallel. On
    /// the local target the release is unpacked once and linked for the others, from
    /// `source` when given (a host of this machine that already holds it verified).
    /// `done` hears each host's outcome as it comes; the first failure is returned once
    /// every host is done, so nothing is left half-sent behind the caller's back.
    pub async fn send(
        &self,
        reporter: &Arc<dyn Reporter>,
        mut hosts: Vec<Host>,
        observed: &BTreeMap<String, HostState>,
        mut source: Option<Host>,
        done: &(dyn Fn(&str, Result<(), String>) + Send + Sync),
    ) -> Result<(), Error> {
        let artifact = self.artifact;
        let raw = self.raw.as_deref();
        if source.is_none() && hosts.len() > 1 && hosts.iter().all(|h| h.transport.is_local()) {
            let first = hosts.remove(0);
            let result =
                ship_one(&first, artifact, raw, &self.sums, has(observed, &first, artifact), reporter.as_ref())
                    .await
                    .map_err(|e| ship_failed(&first.name, &artifact.version, &e));
            done(&first.name, result.as_ref().copied().map_err(ToString::to_string));
            result?;
            source = Some(first);
        }
        let slots = Arc::new(tokio::sync::Semaphore::new(UPLOADS_AT_ONCE));
        let mut unheard: BTreeSet<String> = hosts.iter().map(|h| h.name.clone()).collect();
        let mut tasks = JoinSet::new();
        for host in hosts {
            let slots = Arc::clone(&slots);
            let present = has(observed, &host, artifact);
            let artifact = artifact.clone();
            let sums = self.sums.clone();
            let reporter = Arc::clone(reporter);
            let source = source.clone().filter(|s| s.transport.is_local() && host.transport.is_local());
            let raw = self.raw.clone();
            tasks.spawn(async move {
                let _slot = slots.acquire().await;
                let result = match source {
                    Some(source) if !present => {
                        link_one(&host, &source, &artifact, raw.as_deref(), &sums, reporter.as_ref()).await
                    }
                    _ => ship_one(&host, &artifact, raw.as_deref(), &sums, present, reporter.as_ref()).await,
                };
                (host.name.clone(), result)
            });
        }
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            let (host, result) = match joined {
                Ok(joined) => joined,
                Err(e) => {
                    first_error.get_or_insert(Error::failed(format!("a shipping task failed: {e}")));
                    continue;
                }
            };
            let result = result.map_err(|e| ship_failed(&host, &artifact.version, &e));
            unheard.remove(&host);
            done(&host, result.as_ref().copied().map_err(ToString::to_string));
            if let Err(error) = result {
                first_error.get_or_insert(error);
            }
        }
        // A task that died without a word (a panic) still ends its host's wait.
        for host in unheard {
            done(&host, Err(format!("shipping release {} to `{host}` ended without a result", artifact.version)));
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Uploads (unless present) and unpacks the artifact on `hosts`, in parallel.
pub async fn ship_to(
    settings: &Settings,
    reporter: &Arc<dyn Reporter>,
    hosts: Vec<Host>,
    observed: &BTreeMap<String, HostState>,
    artifact: &Artifact,
) -> Result<(), Error> {
    let shipment = Shipment::prepare(settings, artifact, observed, hosts.iter()).await;
    shipment.send(reporter, hosts, observed, None, &|_, _| {}).await
}

fn ship_failed(host: &str, version: &str, source: &HostError) -> Error {
    let source = crate::error::chain(source);
    let hint = if source.contains("different contents") {
        "a version names one release forever; build the changed tree as a new version (`--version ...`)"
    } else if source.contains("not enough disk space") {
        "no instance was changed; free space on the host, or keep fewer releases (`[ferry] keep_releases`), \
         and run the deploy again"
    } else {
        "no instance was changed; fix the host (disk space: `df -h`, permissions) and run the deploy again"
    };
    Error::Failed {
        message: format!("shipping release {version} to `{host}` failed: {source}"),
        hint: Some(hint.into()),
    }
}

/// Installs the release on `host` as links to `source`'s copy (both directories of
/// this machine); ships it the usual way if linking fails (another filesystem).
async fn link_one(
    host: &Host,
    source: &Host,
    artifact: &Artifact,
    raw: Option<&RawTar>,
    sums: &str,
    reporter: &dyn Reporter,
) -> Result<(), HostError> {
    match host.install_linked(source, &artifact.sha256, &artifact.version).await {
        Ok(installed) => {
            reporter.event(&Event::Upload { host: host.name.clone(), bytes_sent: 0, skipped: true });
            reporter.event(&Event::ReleaseInstalled {
                host: host.name.clone(),
                version: artifact.version.clone(),
                already_present: !installed,
            });
            Ok(())
        }
        Err(_) => ship_one(host, artifact, raw, sums, false, reporter).await,
    }
}

/// The artifact's plain tar stream, when deflate saved next to nothing (a release of
/// compressed files): the same bytes on the wire, nothing to decompress on the hosts.
/// Written once under `.ferry/build` for every host; `None` (ship the artifact) when
/// that is not worth it or fails. The hosts then keep no copy of the archive, so
/// `.ferry/build` keeps one (`regions add` and `scale` ship the release from it).
async fn raw_stream(dir: PathBuf, kept: PathBuf, artifact: &Artifact) -> Option<Arc<RawTar>> {
    if !crate::release::worth_shipping_raw(artifact.size, &artifact.manifest) {
        return None;
    }
    let dest = dir.join(format!(".{}-{}.tar", artifact.sha256, std::process::id()));
    let archive = artifact.path.clone();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).ok()?;
        if kept != archive {
            std::fs::copy(&archive, &kept).ok()?;
        }
        crate::release::decompress(&archive, &dest).ok()
    })
    .await
    .ok()
    .flatten()
    .map(Arc::new)
}

async fn ship_one(
    host: &Host,
    artifact: &Artifact,
    raw: Option<&RawTar>,
    sums: &str,
    present: bool,
    reporter: &dyn Reporter,
) -> Result<(), HostError> {
    let skipped = present || host.has_artifact(&artifact.sha256).await?;
    let (installed, bytes_sent) = if skipped {
        (host.install_release(&artifact.sha256, &artifact.version, sums).await?, 0)
    } else {
        let (path, size) = raw.map_or((&artifact.path, artifact.size), |r| (&r.path, r.size));
        let progress = |sent| reporter.upload_progress(&host.name, sent, size);
        let parcel = Parcel { sha256: &artifact.sha256, version: &artifact.version, size, raw: raw.is_some(), sums };
        host.ship_release(path, &parcel, &progress).await?
    };
    reporter.event(&Event::Upload { host: host.name.clone(), bytes_sent, skipped });
    reporter.event(&Event::ReleaseInstalled {
        host: host.name.clone(),
        version: artifact.version.clone(),
        already_present: !installed,
    });
    Ok(())
}

/// Gets the release `version` onto `missing` hosts (a region or host that joined
/// later): from this machine's build directory when the tarball there matches, else
/// downloaded from a host that has it.
pub async fn ship_existing(
    settings: &Settings,
    reporter: &Arc<dyn Reporter>,
    fleet: &Fleet,
    observed: &BTreeMap<String, HostState>,
    version: &str,
    missing: Vec<Host>,
) -> Result<(), Error> {
    let Some((source, installed)) = fleet.hosts().find_map(|h| {
        observed.get(&h.name).and_then(|s| s.releases.iter().find(|r| r.version == version)).map(|r| (h, r.clone()))
    }) else {
        return Err(Error::failed(format!(
            "no host has release {version} any more; run `ferry deploy` to ship it again"
        )));
    };
    let local = settings.kept_archive(version);
    let tarball = if crate::release::sha256_file(&local).is_ok_and(|sha| sha == installed.sha256) {
        local
    } else {
        let dir = settings.build_dir();
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            action: "create",
            path: dir.display().to_string(),
            source,
        })?;
        let dest = dir.join(format!("{}-{version}.download.tar.gz", settings.app));
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
    let artifact = crate::release::take(&tarball, &settings.app).await?;
    if artifact.sha256 != installed.sha256 {
        return Err(Error::failed(format!(
            "the copy of {version} found does not match the hosts' sha256; run `ferry deploy` to ship it again"
        )));
    }
    ship_to(settings, reporter, missing, observed, &artifact).await
}

/// Gives hosts that joined the app after its secrets were set (a new region, a new
/// host) the same secrets as the primary's first host. Uses the secrets digests
/// `observed` already holds, so it costs nothing when every host agrees.
pub async fn sync_secrets(
    reporter: &dyn Reporter,
    fleet: &Fleet,
    observed: &BTreeMap<String, HostState>,
) -> Result<(), Error> {
    let Some(reference) = fleet.primary().and_then(|r| r.hosts.first()) else { return Ok(()) };
    let digest = |host: &str| observed.get(host).and_then(|s| s.secrets.clone());
    let wanted = digest(&reference.name);
    let mut raw = None;
    for host in fleet.hosts().filter(|h| h.name != reference.name) {
        if digest(&host.name) == wanted {
            continue;
        }
        if raw.is_none() {
            raw =
                Some(reference.secrets_raw().await.map_err(|source| Error::Host { step: "reading secrets", source })?);
        }
        host.secrets_replace(raw.clone().unwrap_or_default())
            .await
            .map_err(|source| Error::Host { step: "copying secrets", source })?;
        reporter.event(&Event::Warning {
            message: format!("copied the app's secrets to `{}`, which did not have them", host.name),
        });
    }
    Ok(())
}

/// A BEAM release's nodes share a cookie: the app's `RELEASE_COOKIE` secret, made once
/// (random) when no host has one, and stored on every host that lacks it, under the
/// deploy's lock. `mix release` writes a new cookie per fresh build, so the release's
/// own cannot be it.
pub async fn ensure_cookie(reporter: &dyn Reporter, fleet: &Fleet) -> Result<(), Error> {
    use base64::Engine as _;
    use std::io::Read as _;
    const KEY: &str = "RELEASE_COOKIE";
    let mut lacking = Vec::new();
    let mut cookie = None;
    for host in fleet.hosts() {
        let has = host.secrets_list().await.map_err(|source| Error::Host { step: "listing secrets", source })?;
        if has.iter().any(|(name, _)| name == KEY) {
            if cookie.is_none() {
                cookie =
                    host.secret_get(KEY).await.map_err(|source| Error::Host { step: "reading a secret", source })?;
            }
        } else {
            lacking.push(host);
        }
    }
    if lacking.is_empty() {
        return Ok(());
    }
    let cookie = if let Some(cookie) = cookie {
        cookie
    } else {
        let mut bytes = [0u8; 24];
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).map_err(|source| Error::Io {
            action: "read",
            path: "/dev/urandom".into(),
            source,
        })?;
        reporter.note("made the app's RELEASE_COOKIE (a secret, the same on every host) for its Erlang distribution");
        super::hex(&bytes)
    };
    let line = format!("{KEY}={}\n", base64::engine::general_purpose::STANDARD.encode(cookie.as_bytes()));
    for host in lacking {
        host.secrets_set(&[KEY.to_string()], line.clone())
            .await
            .map_err(|source| Error::Host { step: "storing the release cookie", source })?;
    }
    Ok(())
}
