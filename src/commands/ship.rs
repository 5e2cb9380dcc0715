//! Shipping a release to hosts: upload it where it is missing (streamed into `tar`
//! on the host, skipped where the same sha256 is already there), unpack, verify. On
//! the local target, where every region is a directory of this machine, the release
//! is unpacked once and the other regions get hard links to it. A deploy ships to the
//! primary region first and to the others while the primary rolls out; each host's
//! result is reported as it comes, so a region waits only for its own hosts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::error::Error;
use crate::host::{Host, HostError, HostState};
use crate::release::RawTar;
use crate::report::{Event, Reporter};

use super::build::Artifact;
use super::Ctx;

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
        ctx: &Ctx,
        artifact: &'a Artifact,
        observed: &BTreeMap<String, HostState>,
        mut hosts: impl Iterator<Item = &'h Host>,
    ) -> Shipment<'a> {
        let raw = if hosts.any(|h| !has(observed, h, artifact)) { raw_stream(ctx, artifact).await } else { None };
        Shipment { artifact, raw, sums: artifact.manifest.sha256sum_lines() }
    }

    /// Uploads (unless present) and unpacks the release on `hosts`, in parallel. On
    /// the local target the release is unpacked once and linked for the others, from
    /// `source` when given (a host of this machine that already holds it verified).
    /// `done` hears each host's outcome as it comes; the first failure is returned once
    /// every host is done, so nothing is left half-sent behind the caller's back.
    pub async fn send(
        &self,
        ctx: &Ctx,
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
                ship_one(&first, artifact, raw, &self.sums, has(observed, &first, artifact), ctx.reporter.as_ref())
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
            let reporter = Arc::clone(&ctx.reporter);
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
pub async fn ship_to<'a>(
    ctx: &Ctx,
    hosts: impl Iterator<Item = &'a Host>,
    observed: &BTreeMap<String, HostState>,
    artifact: &Artifact,
) -> Result<(), Error> {
    let hosts: Vec<Host> = hosts.cloned().collect();
    let shipment = Shipment::prepare(ctx, artifact, observed, hosts.iter()).await;
    shipment.send(ctx, hosts, observed, None, &|_, _| {}).await
}

fn ship_failed(host: &str, version: &str, source: &HostError) -> Error {
    let source = crate::error::chain(source);
    let hint = if source.contains("different contents") {
        "a version names one release forever; build the changed tree as a new version (`--version ...`)"
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
async fn raw_stream(ctx: &Ctx, artifact: &Artifact) -> Option<Arc<RawTar>> {
    if !crate::release::worth_shipping_raw(artifact.size, &artifact.manifest) {
        return None;
    }
    let dir = ctx.config.dir.join(".ferry").join("build");
    let dest = dir.join(format!(".{}-{}.tar", artifact.sha256, std::process::id()));
    let kept = dir.join(format!("{}-{}.tar.gz", ctx.config.app, artifact.version));
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
        host.ship_release(path, raw.is_some(), &artifact.sha256, size, &artifact.version, sums, &progress).await?
    };
    reporter.event(&Event::Upload { host: host.name.clone(), bytes_sent, skipped });
    reporter.event(&Event::ReleaseInstalled {
        host: host.name.clone(),
        version: artifact.version.clone(),
        already_present: !installed,
    });
    Ok(())
}
