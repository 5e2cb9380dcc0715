//! The errors of building, packing and inspecting a release. Each names what a user needs
//! to find the problem: the version, the command, the file or the archive entry. Values
//! that come from outside (versions, archive entry names) are shown escaped, so a control
//! character can never reach the terminal raw.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(
        "invalid release version `{}`: use 1 to 128 letters, digits, `.`, `_`, `+` and `-`, not starting with `.` or `-`",
        .version.escape_debug()
    )]
    InvalidVersion { version: String },

    #[error(
        "`git describe` in `{}` gave `{}`, which is not a valid release version (only letters, digits, `.`, `_`, `+` and `-` are allowed)",
        .dir.display(),
        .version.escape_debug()
    )]
    InvalidGitVersion { version: String, dir: PathBuf },

    #[error("failed to run build command `{command}` in `{}`", .dir.display())]
    BuildSpawn { command: String, dir: PathBuf, source: io::Error },

    #[error("build command `{command}` failed ({status})")]
    BuildFailed { command: String, status: ExitStatus },

    #[error("release directory `{}` does not exist or is not a directory", .path.display())]
    SourceNotFound { path: PathBuf },

    #[error(
        "release directory `{}` contains `{name}`, a name ferry writes into every release itself (`{}` and top-level `.ferry-*` names); rename it",
        .src.display(),
        crate::release::MANIFEST_NAME
    )]
    ReservedName { src: PathBuf, name: String },

    #[error(
        "the release archive `{}` would be written inside the release directory `{}`, so it would pack itself",
        .out.display(),
        .src.display()
    )]
    OutputInsideSource { out: PathBuf, src: PathBuf },

    #[error(
        "symlink `{}` points to `{}`, outside the release directory (a target must be relative, go up only with leading `..` and stay inside)",
        .path.display(),
        .target.display()
    )]
    UnsafeSymlink { path: PathBuf, target: PathBuf },

    #[error(
        "`{}` is not a regular file, directory or symlink (fifos, sockets and devices cannot be packed)",
        .path.display()
    )]
    UnsupportedFileType { path: PathBuf },

    #[error("cannot pack `{}`: {reason}", .path.display().to_string().escape_debug())]
    UnsupportedName { path: PathBuf, reason: &'static str },

    #[error("`{}` changed while it was being packed", .path.display())]
    ChangedWhilePacking { path: PathBuf },

    #[error("failed to encode the release manifest")]
    EncodeManifest { source: serde_json::Error },

    #[error("release archive `{}` does not exist", .tarball.display())]
    TarballNotFound { tarball: PathBuf },

    #[error("`{}` is not a valid tar.gz archive", .tarball.display())]
    CorruptArchive { tarball: PathBuf, source: io::Error },

    #[error("`{}` is not a ferry release: {reason}", .tarball.display())]
    NotARelease { tarball: PathBuf, reason: String },

    #[error("`{}` has an unsafe entry `{}`: {reason}", .tarball.display(), .entry.escape_debug())]
    UnsafeEntry { tarball: PathBuf, entry: String, reason: String },

    #[error(
        "`{}` does not match its manifest: `{}` {detail}",
        .tarball.display(),
        .entry.escape_debug()
    )]
    ManifestMismatch { tarball: PathBuf, entry: String, detail: String },

    #[error(
        "`{}` unpacks to {}, more than the {} a release archive may hold",
        .tarball.display(),
        bytes(*.size),
        bytes(*.limit)
    )]
    TooLarge { tarball: PathBuf, size: u64, limit: u64 },

    #[error(
        "not enough disk space for release {version}: it needs {} (unpacked, with a margin) and `{}` has {} free",
        bytes(*.need),
        .dir.display(),
        bytes(*.free)
    )]
    NoRoom { version: String, dir: PathBuf, need: u64, free: u64 },

    #[error("failed to {action} `{}`", .path.display())]
    Io { action: &'static str, path: PathBuf, source: io::Error },
}

/// A size for people: `512 B`, `1.5 KiB`, `20.0 MiB`, `3.2 GiB`.
#[must_use]
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    #[allow(clippy::cast_precision_loss)]
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

impl ReleaseError {
    /// True when the user asked for something that cannot work (a bad version, a
    /// missing directory or file) rather than something failing along the way.
    #[must_use]
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ReleaseError::InvalidVersion { .. }
                | ReleaseError::InvalidGitVersion { .. }
                | ReleaseError::SourceNotFound { .. }
                | ReleaseError::OutputInsideSource { .. }
                | ReleaseError::TarballNotFound { .. }
                | ReleaseError::TooLarge { .. }
        )
    }

    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| ReleaseError::Io { action, path, source }
    }
}
