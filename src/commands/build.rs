//! `ferry release build`, and obtaining the release a deploy ships: built from the
//! tree, or taken from `--release FILE` after checking every entry is safe.

use std::path::PathBuf;

use crate::error::Error;
use crate::release::{self, Manifest};
use crate::report::Event;

use super::Ctx;

/// A release tarball ready to ship.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub version: String,
    pub manifest: Manifest,
}

pub async fn run(ctx: &Ctx, version: Option<String>, output: Option<PathBuf>) -> Result<(), Error> {
    let artifact = pack(ctx, version, output).await?;
    if ctx.json {
        let object = serde_json::json!({
            "path": artifact.path.display().to_string(),
            "sha256": artifact.sha256,
            "size": artifact.size,
            "version": artifact.version,
        });
        println!("{object}");
    } else {
        println!("{}", artifact.path.display());
        eprintln!("version {}  sha256 {}  {} bytes", artifact.version, artifact.sha256, artifact.size);
    }
    Ok(())
}

/// Builds the release for a deploy, reporting it as a `built` event.
pub async fn build(ctx: &Ctx, version: Option<String>) -> Result<Artifact, Error> {
    let artifact = pack(ctx, version, None).await?;
    ctx.event(Event::Built {
        path: artifact.path.display().to_string(),
        sha256: artifact.sha256.clone(),
        size: artifact.size,
        version: artifact.version.clone(),
    });
    Ok(artifact)
}

/// Runs the build command (if any) and packs the release directory.
async fn pack(ctx: &Ctx, version: Option<String>, output: Option<PathBuf>) -> Result<Artifact, Error> {
    let config = ctx.config.clone();
    let artifact = tokio::task::spawn_blocking(move || -> Result<Artifact, Error> {
        let version = release::resolve_version(version.as_deref(), &config.dir)?;
        if let Some(command) = &config.ferry.build.command {
            release::run_build_command(command, &config.dir, &version)?;
        }
        let dir = output.unwrap_or_else(|| config.dir.join(".ferry").join("build"));
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            action: "create",
            path: dir.display().to_string(),
            source,
        })?;
        let out = dir.join(format!("{}-{version}.tar.gz", config.app));
        let built =
            release::pack(&config.ferry.build.path, &config.app, &version, release::git_commit(&config.dir), &out)?;
        Ok(Artifact {
            path: built.path,
            sha256: built.sha256,
            size: built.size,
            version: built.version,
            manifest: built.manifest,
        })
    })
    .await
    .map_err(|e| Error::failed(format!("the build task failed: {e}")))??;
    Ok(artifact)
}

/// Checks a prebuilt tarball (`--release FILE`) without unpacking it.
pub async fn take(ctx: &Ctx, path: PathBuf) -> Result<Artifact, Error> {
    let app = ctx.config.app.clone();
    tokio::task::spawn_blocking(move || -> Result<Artifact, Error> {
        let inspected = release::inspect(&path)?;
        if inspected.manifest.app != app {
            return Err(Error::Usage {
                message: format!("`{}` is a release of `{}`, not of `{app}`", path.display(), inspected.manifest.app),
                hint: None,
            });
        }
        release::validate_version(&inspected.manifest.version)?;
        Ok(Artifact {
            path,
            sha256: inspected.sha256,
            size: inspected.size,
            version: inspected.manifest.version.clone(),
            manifest: inspected.manifest,
        })
    })
    .await
    .map_err(|e| Error::failed(format!("the inspect task failed: {e}")))?
}
