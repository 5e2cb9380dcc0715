//! Inspection of a release archive handed to ferry (`--release FILE`) before anything is
//! uploaded: one streaming pass that hashes the whole file and proves it is a ferry
//! release that is safe to unpack — plain relative paths, only files, directories and
//! symlinks that stay inside, nothing after the end — and that matches its manifest. It
//! must not unpack to disk or hold entry contents in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use tar::EntryType;

use super::digest::Hashing;
use super::manifest::{EntryKind, Manifest, ManifestEntry, MANIFEST_NAME};
use super::paths::{check_entry_path, check_name, check_symlink_target};
use super::{validate_version, ReleaseError};

/// A manifest larger than this is refused rather than parsed (about a million entries).
const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// The most a `--release` archive may unpack to (its manifest's file sizes), checked
/// before any entry is read: a small archive of zeros cannot fill a disk.
pub const MAX_RELEASE_UNPACKED: u64 = 8 << 30;

/// A release archive that passed inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    /// Lowercase hex sha256 of the `tar.gz` file.
    pub sha256: String,
    /// Size of the `tar.gz` file in bytes.
    pub size: u64,
    pub manifest: Manifest,
}

/// Streams through the archive once, without unpacking it, checking every entry.
///
/// # Errors
///
/// `TarballNotFound`; `CorruptArchive` when it is not a readable `tar.gz`;
/// `NotARelease` when the manifest is missing or unreadable or data follows the end;
/// `UnsafeEntry` for an entry that could write outside the release or is not a file,
/// directory or symlink; `ManifestMismatch` when the entries differ from the manifest.
pub fn inspect(tarball: &Path) -> Result<Inspected, ReleaseError> {
    let file = File::open(tarball).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            ReleaseError::TarballNotFound { tarball: tarball.to_owned() }
        } else {
            ReleaseError::Io { action: "open", path: tarball.to_owned(), source }
        }
    })?;
    // Like `gzip -d` under `tar -xzf`, the decoder reads every gzip member in turn, so
    // what a host would unpack from a later member is checked too (as entries, or as
    // data after the end-of-archive marker), and bytes that are no gzip member are corrupt.
    let mut raw = BufReader::new(Hashing::new(file));
    let manifest = {
        let mut gz = flate2::bufread::MultiGzDecoder::new(&mut raw);
        let manifest = check_and_write(tarball, &mut gz, None, &mut |manifest| {
            let size = manifest.unpacked_size();
            if size > MAX_RELEASE_UNPACKED {
                return Err(ReleaseError::TooLarge { tarball: tarball.to_owned(), size, limit: MAX_RELEASE_UNPACKED });
            }
            Ok(())
        })?;
        check_end_of_archive(tarball, &mut gz)?;
        manifest
    };
    // The decoder stops only at the end of the file; what it left would be unchecked.
    let trailing = io::copy(&mut raw, &mut io::sink()).map_err(ReleaseError::io("read", tarball))?;
    if trailing > 0 {
        return Err(not_a_release(tarball, "it has data after the end of its compressed stream"));
    }
    let (_, sha256, size) = raw.into_inner().finish();
    Ok(Inspected { sha256, size, manifest })
}

fn corrupt(tarball: &Path) -> impl Fn(io::Error) -> ReleaseError + '_ {
    move |source| ReleaseError::CorruptArchive { tarball: tarball.to_owned(), source }
}

fn not_a_release(tarball: &Path, reason: impl Into<String>) -> ReleaseError {
    ReleaseError::NotARelease { tarball: tarball.to_owned(), reason: reason.into() }
}

/// Checks every entry as [`inspect`] does and, with `out`, writes it under `out` as it
/// goes: what is written is exactly what was checked, by the same parser. Files are
/// created new (never through an existing name or a link), a directory only where the
/// archive made its parent, symlinks only where they stay inside. `room` judges the
/// manifest before any other entry is read (its size against a limit or free space);
/// an entry is compared with its manifest entry's kind and size before it is written,
/// so no more than the manifest says is ever written.
pub(crate) fn check_and_write(
    tarball: &Path,
    reader: impl Read,
    out: Option<&Path>,
    room: &mut dyn FnMut(&Manifest) -> Result<(), ReleaseError>,
) -> Result<Manifest, ReleaseError> {
    let mut archive = tar::Archive::new(reader);
    let manifest = {
        let mut entries = archive.entries().map_err(corrupt(tarball))?;
        let first = entries.next().ok_or_else(|| not_a_release(tarball, "it has no entries"))?;
        let manifest = read_manifest(tarball, first.map_err(corrupt(tarball))?, out)?;
        room(&manifest)?;
        let mut checker = Checker::new(tarball, &manifest, out)?;
        for entry in entries {
            checker.check(entry.map_err(corrupt(tarball))?)?;
        }
        checker.finish()?;
        manifest
    };
    if out.is_some() {
        check_end_of_archive(tarball, archive.into_inner())?;
    }
    Ok(manifest)
}

fn read_manifest<R: Read>(
    tarball: &Path,
    mut entry: tar::Entry<'_, R>,
    out: Option<&Path>,
) -> Result<Manifest, ReleaseError> {
    let is_manifest = entry.path_bytes().as_ref() == MANIFEST_NAME.as_bytes()
        && entry.header().entry_type() == EntryType::Regular
        && entry.pax_extensions().map_err(corrupt(tarball))?.is_none();
    if !is_manifest {
        let first = String::from_utf8_lossy(&entry.path_bytes()).escape_debug().to_string();
        return Err(not_a_release(tarball, format!("its first entry is `{first}`, not a `{MANIFEST_NAME}` file")));
    }
    if entry.size() > MAX_MANIFEST_BYTES {
        return Err(not_a_release(tarball, format!("its manifest is larger than {} MiB", MAX_MANIFEST_BYTES >> 20)));
    }
    let manifest: Manifest = serde_json::from_reader(&mut entry).map_err(|e| {
        if e.is_io() {
            // Reading failed underneath the parser: the archive is broken, not the manifest.
            corrupt(tarball)(io::Error::from(e))
        } else {
            not_a_release(tarball, format!("its manifest cannot be read: {e}"))
        }
    })?;
    if validate_version(&manifest.version).is_err() {
        let version = manifest.version.escape_debug();
        return Err(not_a_release(tarball, format!("its manifest has an invalid version `{version}`")));
    }
    if let Some(out) = out {
        let path = out.join(MANIFEST_NAME);
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| corrupt(tarball)(io::Error::other(e)))?;
        new_file(&path, 0o644)
            .and_then(|mut f| io::Write::write_all(&mut f, &json))
            .map_err(ReleaseError::io("write", &path))?;
    }
    Ok(manifest)
}

/// Whether ferry may write this name into a release directory itself (`.ferry-release`,
/// and the temporary names it writes through): every top-level `.ferry-*` is kept from
/// archives.
pub(crate) fn reserved(path: &str) -> bool {
    !path.contains('/') && path.starts_with(".ferry-")
}

/// Creates `path` as a new file: `create_new` fails on any existing name, a symlink
/// included, so nothing is ever written through a link.
fn new_file(path: &Path, mode: u32) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path)
}

/// Unpacks a release's tar stream (plain, not gzip) into `dest`, an empty directory,
/// checking every entry against the archive's manifest and the safety rules as it
/// goes; `name` names the stream in errors. Returns the manifest.
///
/// # Errors
///
/// As [`inspect`], whatever `room` returns for the manifest, and `Io` when `dest`
/// cannot be written.
pub fn unpack(
    reader: impl Read,
    dest: &Path,
    name: &Path,
    room: &mut dyn FnMut(&Manifest) -> Result<(), ReleaseError>,
) -> Result<Manifest, ReleaseError> {
    check_and_write(name, reader, Some(dest), room)
}

/// After the last entry only zero blocks may follow, up to a valid end of the gzip stream.
fn check_end_of_archive(tarball: &Path, mut rest: impl Read) -> Result<(), ReleaseError> {
    let mut buf = [0u8; 8192];
    loop {
        let n = rest.read(&mut buf).map_err(corrupt(tarball))?;
        if n == 0 {
            return Ok(());
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(not_a_release(tarball, "it has data after its end-of-archive marker"));
        }
    }
}

/// Checks the entries after the manifest, one at a time, against the safety rules and
/// the manifest.
struct Checker<'a> {
    tarball: &'a Path,
    /// Where checked entries are written, when unpacking.
    out: Option<&'a Path>,
    /// Manifest entries not yet seen in the archive.
    listed: BTreeMap<&'a str, &'a ManifestEntry>,
    seen: BTreeSet<String>,
    dirs: BTreeSet<String>,
}

impl<'a> Checker<'a> {
    fn new(tarball: &'a Path, manifest: &'a Manifest, out: Option<&'a Path>) -> Result<Self, ReleaseError> {
        let mut listed = BTreeMap::new();
        for entry in &manifest.files {
            if listed.insert(entry.path.as_str(), entry).is_some() {
                return Err(Self::mismatch(tarball, &entry.path, "is listed twice in the manifest".into()));
            }
        }
        let seen = BTreeSet::from([MANIFEST_NAME.to_owned()]);
        Ok(Checker { tarball, out, listed, seen, dirs: BTreeSet::new() })
    }

    fn mismatch(tarball: &Path, entry: &str, detail: String) -> ReleaseError {
        ReleaseError::ManifestMismatch { tarball: tarball.to_owned(), entry: entry.to_owned(), detail }
    }

    fn check<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ReleaseError> {
        let raw_path = entry.path_bytes().into_owned();
        let tarball = self.tarball;
        let unsafe_entry = |reason: &str| ReleaseError::UnsafeEntry {
            tarball: tarball.to_owned(),
            entry: String::from_utf8_lossy(&raw_path).into_owned(),
            reason: reason.to_owned(),
        };

        let kind = match entry.header().entry_type() {
            EntryType::Regular => EntryKind::File,
            EntryType::Directory => EntryKind::Dir,
            EntryType::Symlink => EntryKind::Symlink,
            EntryType::Link => return Err(unsafe_entry("hard links are not allowed")),
            other => return Err(unsafe_entry(&format!("entries of type {other:?} are not allowed"))),
        };
        if entry.pax_extensions().map_err(corrupt(tarball))?.is_some() {
            return Err(unsafe_entry("pax extended headers are not allowed"));
        }
        let path = std::str::from_utf8(&raw_path).map_err(|_| unsafe_entry("its path is not UTF-8"))?;
        let path = if kind == EntryKind::Dir { path.strip_suffix('/').unwrap_or(path) } else { path };
        check_entry_path(path).map_err(unsafe_entry)?;
        if reserved(path) {
            return Err(unsafe_entry("it is a name ferry writes into every release itself"));
        }
        if !self.seen.insert(path.to_owned()) {
            return Err(unsafe_entry("it appears more than once"));
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            if !self.dirs.contains(parent) {
                return Err(unsafe_entry(&format!("its parent `{parent}` is not a directory earlier in the archive")));
            }
        }
        let mode = entry.header().mode().map_err(corrupt(tarball))?;
        if mode & !0o777 != 0 {
            return Err(unsafe_entry(&format!("its mode {mode:o} has setuid, setgid or sticky bits")));
        }
        let size = entry.size();
        if kind != EntryKind::File && size != 0 {
            return Err(unsafe_entry("a directory or symlink must not carry data"));
        }
        // Before anything of it is written: listed, and of the kind and size listed.
        match self.listed.get(path) {
            None => return Err(Self::mismatch(tarball, path, "is not listed in the manifest".into())),
            Some(listed) if listed.kind != kind || listed.size != size => {
                let actual = ManifestEntry { path: path.to_owned(), kind, size, sha256: None, mode, target: None };
                return Err(Self::mismatch(tarball, path, difference(&actual, listed)));
            }
            Some(_) => {}
        }
        let target = match kind {
            EntryKind::Symlink => Some(symlink_target(path, &entry).map_err(|reason| unsafe_entry(&reason))?),
            _ => None,
        };
        let sha256 = match kind {
            EntryKind::File => Some(hash_contents(tarball, &mut entry, self.out.map(|o| (o.join(path), mode)))?),
            _ => None,
        };
        if let Some(out) = self.out {
            let at = out.join(path);
            let created = match (kind, &target) {
                (EntryKind::Dir, _) => std::fs::create_dir(&at),
                (EntryKind::Symlink, Some(target)) => std::os::unix::fs::symlink(target, &at),
                _ => Ok(()),
            };
            created.map_err(ReleaseError::io("create", &at))?;
        }
        if kind == EntryKind::Dir {
            self.dirs.insert(path.to_owned());
        }
        let actual = ManifestEntry { path: path.to_owned(), kind, size, sha256, mode, target };
        self.compare(&actual)
    }

    fn compare(&mut self, actual: &ManifestEntry) -> Result<(), ReleaseError> {
        let Some(listed) = self.listed.remove(actual.path.as_str()) else {
            return Err(Self::mismatch(self.tarball, &actual.path, "is not listed in the manifest".into()));
        };
        if listed == actual {
            Ok(())
        } else {
            Err(Self::mismatch(self.tarball, &actual.path, difference(actual, listed)))
        }
    }

    fn finish(self) -> Result<(), ReleaseError> {
        match self.listed.first_key_value() {
            Some((path, _)) => {
                Err(Self::mismatch(self.tarball, path, "is listed in the manifest but missing from the archive".into()))
            }
            None => Ok(()),
        }
    }
}

fn symlink_target<R: Read>(path: &str, entry: &tar::Entry<'_, R>) -> Result<String, String> {
    let raw = entry.link_name_bytes().ok_or("it is a symlink without a target")?;
    let target = std::str::from_utf8(&raw).map_err(|_| "its target is not UTF-8")?;
    check_name(target).map_err(|reason| format!("its target: {reason}"))?;
    check_symlink_target(path, target).map_err(|reason| format!("{reason} (`{target}`)"))?;
    Ok(target.to_owned())
}

/// Hashes an entry's contents, writing them to a new file at `out` with its mode.
fn hash_contents<R: Read>(
    tarball: &Path,
    entry: &mut tar::Entry<'_, R>,
    out: Option<(std::path::PathBuf, u32)>,
) -> Result<String, ReleaseError> {
    let size = entry.size();
    let mut contents = Hashing::new(entry);
    match out {
        Some((path, mode)) => {
            let mut file = new_file(&path, mode).map_err(ReleaseError::io("create", &path))?;
            io::copy(&mut contents, &mut file).map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData => corrupt(tarball)(e),
                _ => ReleaseError::Io { action: "write", path: path.clone(), source: e },
            })?;
        }
        None => {
            io::copy(&mut contents, &mut io::sink()).map_err(corrupt(tarball))?;
        }
    }
    let (_, sha256, read) = contents.finish();
    if read == size {
        Ok(sha256)
    } else {
        Err(corrupt(tarball)(io::Error::new(io::ErrorKind::UnexpectedEof, "an entry's contents are cut short")))
    }
}

/// Says how an archive entry differs from its manifest entry (which are not equal).
fn difference(actual: &ManifestEntry, listed: &ManifestEntry) -> String {
    let show = |value: Option<&str>| value.map_or_else(|| "none".to_owned(), |v| format!("`{}`", v.escape_debug()));
    if actual.kind != listed.kind {
        format!("is a {} in the archive but a {} in the manifest", actual.kind, listed.kind)
    } else if actual.size != listed.size {
        format!("has {} bytes but the manifest says {}", actual.size, listed.size)
    } else if actual.sha256 != listed.sha256 {
        let (actual, listed) = (show(actual.sha256.as_deref()), show(listed.sha256.as_deref()));
        format!("has sha256 {actual} but the manifest says {listed}")
    } else if actual.mode != listed.mode {
        format!("has mode {:o} but the manifest says {:o}", actual.mode, listed.mode)
    } else {
        let (actual, listed) = (show(actual.target.as_deref()), show(listed.target.as_deref()));
        format!("points to {actual} but the manifest says {listed}")
    }
}

#[cfg(test)]
#[path = "inspect_tests.rs"]
mod tests;
