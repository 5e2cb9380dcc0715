//! Release building: the version a release gets, the build command that produces the
//! release directory, the deterministic `tar.gz` made from it with its manifest and
//! sha256, and the inspection that decides whether a tarball handed to `--release` is a
//! safe, intact ferry release. It reads and writes local files only: it must not know
//! about hosts, transports or deploys, and it never prints (a build command's output goes
//! to stderr, so stdout stays free for `--json`).

mod artifact;
mod build;
mod digest;
mod error;
mod gzip;
mod inspect;
mod manifest;
mod pack;
mod paths;
mod raw;
mod version;

#[cfg(test)]
mod testutil;

pub use artifact::{build, take, Artifact, ArtifactError, BuildSpec};
pub use build::run_build_command;
pub use digest::sha256_file;
pub use error::ReleaseError;
pub use inspect::{inspect, unpack, Inspected};
pub use manifest::{EntryKind, Manifest, ManifestEntry, MANIFEST_NAME};
pub use pack::{pack, Built, ARCHIVE_MTIME};
pub use raw::{decompress, worth_shipping_raw, RawTar};
pub use version::{git_commit, resolve_version, validate_version};
