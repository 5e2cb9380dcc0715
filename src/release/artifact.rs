//! The release an operation ships: built from the tree (the build command, then the
//! deterministic pack) or taken from a tarball on disk after checking every entry.
//! Both run on a blocking thread; neither prints (the build command's output goes to
//! stderr, so stdout stays free for `--json`).

use std::path::{Path, PathBuf};

use super::{Manifest, ReleaseError};

/// A release tarball ready to ship.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub version: String,
    pub manifest: Manifest,
}

impl Artifact {
    /// Whether the release holds a file at `path` (relative to its root).
    pub fn has_file(&self, path: &str) -> bool {
        self.manifest.files.iter().any(|f| f.path == path)
    }
}

/// What building needs from the app's settings.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    pub app: String,
    /// The project directory (where the build command runs).
    pub dir: PathBuf,
    pub command: Option<String>,
    /// The release directory that is packed.
    pub path: PathBuf,
    /// Where the tarball goes.
    pub output: PathBuf,
}

/// Why an artifact could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error("`{path}` is a release of `{found}`, not of `{app}`")]
    OtherApp { path: String, found: String, app: String },
    #[error("failed to create `{path}`")]
    Io { path: String, source: std::io::Error },
    #[error("the {what} task failed: {message}")]
    Task { what: &'static str, message: String },
}

impl ArtifactError {
    /// A mistake in what the user asked for (a bad version, another app's tarball).
    pub fn is_usage(&self) -> bool {
        match self {
            ArtifactError::Release(e) => e.is_usage(),
            ArtifactError::OtherApp { .. } => true,
            ArtifactError::Io { .. } | ArtifactError::Task { .. } => false,
        }
    }
}

/// Runs the build command (if any) and packs the release directory as `version` (or
/// the version the tree describes).
pub async fn build(spec: BuildSpec, version: Option<String>) -> Result<Artifact, ArtifactError> {
    tokio::task::spawn_blocking(move || -> Result<Artifact, ArtifactError> {
        let version = super::resolve_version(version.as_deref(), &spec.dir)?;
        if let Some(command) = &spec.command {
            super::run_build_command(command, &spec.dir, &version)?;
        }
        std::fs::create_dir_all(&spec.output)
            .map_err(|source| ArtifactError::Io { path: spec.output.display().to_string(), source })?;
        let out = spec.output.join(format!("{}-{version}.tar.gz", spec.app));
        let built = super::pack(&spec.path, &spec.app, &version, super::git_commit(&spec.dir), &out)?;
        Ok(Artifact {
            path: built.path,
            sha256: built.sha256,
            size: built.size,
            version: built.version,
            manifest: built.manifest,
        })
    })
    .await
    .map_err(|e| ArtifactError::Task { what: "build", message: e.to_string() })?
}

/// Checks a prebuilt tarball of `app` without unpacking it.
pub async fn take(path: &Path, app: &str) -> Result<Artifact, ArtifactError> {
    let (path, app) = (path.to_path_buf(), app.to_string());
    tokio::task::spawn_blocking(move || -> Result<Artifact, ArtifactError> {
        let inspected = super::inspect(&path)?;
        if inspected.manifest.app != app {
            return Err(ArtifactError::OtherApp {
                path: path.display().to_string(),
                found: inspected.manifest.app,
                app,
            });
        }
        super::validate_version(&inspected.manifest.version)?;
        Ok(Artifact {
            path,
            sha256: inspected.sha256,
            size: inspected.size,
            version: inspected.manifest.version.clone(),
            manifest: inspected.manifest,
        })
    })
    .await
    .map_err(|e| ArtifactError::Task { what: "inspect", message: e.to_string() })?
}
