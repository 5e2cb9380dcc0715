//! Packing a release directory into a deterministic `tar.gz`: the manifest first, then
//! every entry sorted by path, with fixed times, owners and modes, so the same tree always
//! gives the same bytes and the same sha256, whatever the file times or umask or the number
//! of cores compressing it. It streams file contents and hashes the archive while writing
//! it; it must not hold a file or the archive in memory, and it must not follow symlinks
//! out of the release.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read};
use std::num::NonZeroUsize;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;

use tar::{EntryType, Header};

use super::digest::{sha256_and_size, Hashing};
use super::gzip::{with_parallel_gzip, ParallelGz};
use super::manifest::{EntryKind, Manifest, ManifestEntry, MANIFEST_NAME};
use super::paths::{check_name, check_symlink_target, normalize_target};
use super::{validate_version, ReleaseError};

/// The most compression threads a build uses.
const MAX_WORKERS: NonZeroUsize = NonZeroUsize::new(4).unwrap();

/// Modification time of every archive entry: 2000-01-01T00:00:00Z. Not 0, which some
/// tools warn about as "implausibly old".
pub const ARCHIVE_MTIME: u64 = 946_684_800;

const DIR_MODE: u32 = 0o755;
const EXEC_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;
const SYMLINK_MODE: u32 = 0o777;

/// A packed release archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub path: PathBuf,
    /// Lowercase hex sha256 of the `tar.gz` file.
    pub sha256: String,
    /// Size of the `tar.gz` file in bytes.
    pub size: u64,
    pub version: String,
    pub manifest: Manifest,
}

/// Packs the directory `src` into `out` (written as `out.tmp`, then renamed), compressing
/// on every core.
///
/// # Errors
///
/// `InvalidVersion`; `SourceNotFound`; `OutputInsideSource` when `out` is under `src`;
/// `ReservedName`, `UnsafeSymlink`, `UnsupportedFileType` or `UnsupportedName` for a
/// tree ferry will not pack; `ChangedWhilePacking`; `Io` naming the file that failed.
pub fn pack(
    src: &Path,
    app: &str,
    version: &str,
    git_commit: Option<String>,
    out: &Path,
) -> Result<Built, ReleaseError> {
    // Each worker holds a few MiB of chunks: past a handful, more cores add memory
    // faster than they save time.
    let workers = thread::available_parallelism().unwrap_or(NonZeroUsize::MIN).min(MAX_WORKERS);
    pack_with_workers(src, app, version, git_commit, out, workers)
}

/// [`pack`] with `workers` compression threads, which change only the time it takes.
pub(crate) fn pack_with_workers(
    src: &Path,
    app: &str,
    version: &str,
    git_commit: Option<String>,
    out: &Path,
    workers: NonZeroUsize,
) -> Result<Built, ReleaseError> {
    validate_version(version)?;
    check_output_outside_source(src, out)?;
    let manifest = Manifest { app: app.to_owned(), version: version.to_owned(), git_commit, files: scan(src)? };

    let tmp = tmp_path(out);
    let written = write_archive(src, &manifest, &tmp, workers).and_then(|digest| {
        fs::rename(&tmp, out).map(|()| digest).map_err(ReleaseError::io("move the archive to", out))
    });
    if written.is_err() {
        // Best effort: the error being returned matters more than a leftover temp file.
        let _ = fs::remove_file(&tmp);
    }
    let (sha256, size) = written?;
    Ok(Built { path: out.to_owned(), sha256, size, version: version.to_owned(), manifest })
}

/// Checks that `src` is a directory and that `out` would not land inside it (creating
/// `out`'s directory if needed), so a previous archive is never packed into the next.
fn check_output_outside_source(src: &Path, out: &Path) -> Result<(), ReleaseError> {
    match fs::metadata(src) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(ReleaseError::SourceNotFound { path: src.to_owned() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ReleaseError::SourceNotFound { path: src.to_owned() })
        }
        Err(e) => return Err(ReleaseError::io("read", src)(e)),
    }
    let parent = match out.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    fs::create_dir_all(parent).map_err(ReleaseError::io("create directory", parent))?;
    let src_real = fs::canonicalize(src).map_err(ReleaseError::io("resolve", src))?;
    let parent_real = fs::canonicalize(parent).map_err(ReleaseError::io("resolve", parent))?;
    if parent_real.starts_with(&src_real) {
        return Err(ReleaseError::OutputInsideSource { out: out.to_owned(), src: src.to_owned() });
    }
    Ok(())
}

/// Every entry under `src`, sorted bytewise by relative path, files hashed.
fn scan(src: &Path) -> Result<Vec<ManifestEntry>, ReleaseError> {
    let mut entries = Vec::new();
    let mut pending = vec![String::new()];
    while let Some(dir) = pending.pop() {
        let abs_dir = src.join(&dir);
        for item in fs::read_dir(&abs_dir).map_err(ReleaseError::io("read directory", &abs_dir))? {
            let item = item.map_err(ReleaseError::io("read directory", &abs_dir))?;
            let abs = item.path();
            let name = item.file_name();
            let name = name
                .to_str()
                .ok_or_else(|| ReleaseError::UnsupportedName { path: abs.clone(), reason: "names must be UTF-8" })?;
            check_name(name).map_err(|reason| ReleaseError::UnsupportedName { path: abs.clone(), reason })?;
            if dir.is_empty() && (name == MANIFEST_NAME || super::inspect::reserved(name)) {
                return Err(ReleaseError::ReservedName { src: src.to_owned(), name: name.to_owned() });
            }
            let rel = if dir.is_empty() { name.to_owned() } else { format!("{dir}/{name}") };
            let file_type = fs::symlink_metadata(&abs).map_err(ReleaseError::io("read metadata of", &abs))?;
            let entry = if file_type.is_dir() {
                pending.push(rel.clone());
                ManifestEntry { path: rel, kind: EntryKind::Dir, size: 0, sha256: None, mode: DIR_MODE, target: None }
            } else if file_type.is_file() {
                file_entry(rel, &abs, &file_type)?
            } else if file_type.is_symlink() {
                symlink_entry(rel, &abs)?
            } else {
                return Err(ReleaseError::UnsupportedFileType { path: abs });
            };
            entries.push(entry);
        }
    }
    entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

fn file_entry(rel: String, abs: &Path, meta: &fs::Metadata) -> Result<ManifestEntry, ReleaseError> {
    let (sha256, size) = sha256_and_size(abs)?;
    let mode = if meta.permissions().mode() & 0o111 == 0 { FILE_MODE } else { EXEC_MODE };
    Ok(ManifestEntry { path: rel, kind: EntryKind::File, size, sha256: Some(sha256), mode, target: None })
}

fn symlink_entry(rel: String, abs: &Path) -> Result<ManifestEntry, ReleaseError> {
    let target = fs::read_link(abs).map_err(ReleaseError::io("read symlink", abs))?;
    let unsupported = |reason| ReleaseError::UnsupportedName { path: abs.to_owned(), reason };
    let target_str = target.to_str().ok_or_else(|| unsupported("symlink targets must be UTF-8"))?;
    check_name(target_str).map_err(unsupported)?;
    check_symlink_target(&rel, target_str)
        .map_err(|_| ReleaseError::UnsafeSymlink { path: abs.to_owned(), target: target.clone() })?;
    Ok(ManifestEntry {
        path: rel,
        kind: EntryKind::Symlink,
        size: 0,
        sha256: None,
        mode: SYMLINK_MODE,
        target: Some(normalize_target(target_str)),
    })
}

fn tmp_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Writes the archive to `tmp` and returns its sha256 and size.
fn write_archive(
    src: &Path,
    manifest: &Manifest,
    tmp: &Path,
    workers: NonZeroUsize,
) -> Result<(String, u64), ReleaseError> {
    let write_err = |source| ReleaseError::Io { action: "write", path: tmp.to_owned(), source };
    let file = File::create(tmp).map_err(ReleaseError::io("create", tmp))?;
    let hashing = with_parallel_gzip(Hashing::new(BufWriter::new(file)), workers, |gz| {
        let mut tar = tar::Builder::new(gz);
        let mut json = serde_json::to_vec_pretty(manifest).map_err(|source| ReleaseError::EncodeManifest { source })?;
        json.push(b'\n');
        tar.append_data(&mut header(EntryType::Regular, json.len() as u64, FILE_MODE), MANIFEST_NAME, json.as_slice())
            .map_err(write_err)?;
        for entry in &manifest.files {
            append_entry(&mut tar, src, entry)?;
        }
        tar.into_inner().and_then(ParallelGz::finish).map_err(write_err)
    })?;
    let (buffered, sha256, size) = hashing.finish();
    let file = buffered.into_inner().map_err(|e| write_err(e.into_error()))?;
    file.sync_all().map_err(write_err)?;
    Ok((sha256, size))
}

fn append_entry<W: io::Write>(
    tar: &mut tar::Builder<W>,
    src: &Path,
    entry: &ManifestEntry,
) -> Result<(), ReleaseError> {
    let abs = src.join(&entry.path);
    let pack_err = ReleaseError::io("pack", &abs);
    match entry.kind {
        EntryKind::Dir => tar
            .append_data(&mut header(EntryType::Directory, 0, entry.mode), format!("{}/", entry.path), io::empty())
            .map_err(pack_err),
        EntryKind::Symlink => {
            let target = entry.target.as_deref().unwrap_or_default();
            tar.append_link(&mut header(EntryType::Symlink, 0, entry.mode), &entry.path, target).map_err(pack_err)
        }
        EntryKind::File => {
            let file = File::open(&abs).map_err(ReleaseError::io("open", &abs))?;
            // `take` keeps the archive well-formed if the file grew since it was hashed;
            // the hash check below catches any other change.
            let mut contents = Hashing::new(file.take(entry.size));
            tar.append_data(&mut header(EntryType::Regular, entry.size, entry.mode), &entry.path, &mut contents)
                .map_err(pack_err)?;
            let (_, sha256, size) = contents.finish();
            if size != entry.size || entry.sha256.as_deref() != Some(sha256.as_str()) {
                return Err(ReleaseError::ChangedWhilePacking { path: abs });
            }
            Ok(())
        }
    }
}

fn header(kind: EntryType, size: u64, mode: u32) -> Header {
    // A fresh GNU header has empty user and group names and zero device numbers.
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(ARCHIVE_MTIME);
    header
}

#[cfg(test)]
#[path = "pack_tests.rs"]
mod tests;
