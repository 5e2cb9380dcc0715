//! Installing a release on this host: from an artifact already here, from a stream as
//! it arrives (unpacked while it is received), or as hard links to a copy another app
//! directory of this machine holds. Every entry is checked by the same parser that
//! inspected the archive (`release::unpack`) while it is written; the release is
//! unpacked beside its final place, compared with the manifest the deploy sent, made
//! read-only, and only then renamed into place, so `releases/<version>` is either
//! complete and verified or absent.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::host::proto::Parcel;
use crate::host::InstalledRelease;
use crate::release::ReleaseError;

use super::files::{now_ms, remove_tree, App, RELEASE_FILE};

/// Why a release could not be installed, for the operator.
pub type Failure = String;

/// Whether the release is already installed: `Ok(true)` with this very content,
/// `Err` when another content holds the version.
fn present(app: &App, version: &str, sha256: &str) -> Result<bool, Failure> {
    match app.installed(version) {
        Some(installed) if installed.sha256 == sha256 => Ok(true),
        Some(_) => Err(format!("release {version} is already installed with different contents")),
        None => Ok(false),
    }
}

/// A directory beside `releases/<version>` to unpack into, removed unless kept.
struct Staging {
    dir: PathBuf,
    kept: bool,
}

impl Staging {
    fn new(app: &App, version: &str) -> io::Result<Self> {
        let dir = app.releases().join(format!(".tmp-{version}-{}", std::process::id()));
        let _ = remove_tree(&dir);
        fs::create_dir_all(&dir)?;
        Ok(Staging { dir, kept: false })
    }

    /// Records what the release is, makes it read-only and moves it into place.
    fn keep(mut self, app: &App, version: &str, sha256: &str) -> io::Result<()> {
        let release = InstalledRelease { version: version.into(), sha256: sha256.into(), installed_at: now_ms() };
        let json = serde_json::to_vec(&release).map_err(io::Error::other)?;
        // Written new, never through a name the archive made (archives may not hold
        // `.ferry-*` names; a create that would follow one fails instead).
        let mut file =
            fs::OpenOptions::new().write(true).create_new(true).mode(0o444).open(self.dir.join(RELEASE_FILE))?;
        file.write_all(&json)?;
        file.sync_data()?;
        read_only(&self.dir)?;
        let target = app.release(version);
        let _ = remove_tree(&target);
        fs::rename(&self.dir, &target)?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.kept {
            let _ = remove_tree(&self.dir);
        }
    }
}

/// Takes away every write bit under `dir`, directories last: a release is never
/// modified while installed (instances write into their own directories).
fn read_only(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            read_only(&entry.path())?;
        } else if kind.is_file() {
            let mode = entry.metadata()?.permissions().mode();
            fs::set_permissions(entry.path(), fs::Permissions::from_mode(mode & !0o222))?;
        }
    }
    let mode = fs::metadata(dir)?.permissions().mode();
    fs::set_permissions(dir, fs::Permissions::from_mode(mode & !0o222))
}

/// Unpacks a plain tar stream into `staging`, checking it, and compares its manifest
/// with the sums the deploy sent. Before anything but the manifest is written, the
/// release (and `also` more bytes written beside it: an artifact kept as it arrives)
/// must fit in the free space with a margin.
fn unpack_checked(reader: impl Read, staging: &Staging, version: &str, sums: &str, also: u64) -> Result<(), Failure> {
    let name = PathBuf::from(format!("release {version}"));
    let mut room = |manifest: &crate::release::Manifest| fits(&staging.dir, version, manifest, also);
    let manifest =
        crate::release::unpack(reader, &staging.dir, &name, &mut room).map_err(|e| crate::error::chain(&e))?;
    if manifest.version != version || manifest.sha256sum_lines() != sums {
        return Err(format!("release {version} does not match its manifest"));
    }
    Ok(())
}

/// Whether `manifest`'s files, each rounded up to whole blocks, one block more per
/// entry, and `also` bytes fit in `dir`'s free space with a margin (a twentieth, at
/// least 1 MiB), and its entries in the free inodes.
fn fits(dir: &Path, version: &str, manifest: &crate::release::Manifest, also: u64) -> Result<(), ReleaseError> {
    let Ok(stat) = rustix::fs::statvfs(dir) else { return Ok(()) };
    let block = stat.f_frsize.max(512);
    let entries = manifest.files.len() as u64 + 1;
    let need: u64 = manifest.files.iter().map(|e| e.size.div_ceil(block) * block).sum::<u64>() + entries * block + also;
    let need = need + (need / 20).max(1 << 20);
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    let inodes_short = stat.f_files > 0 && stat.f_favail < entries;
    if need > free || inodes_short {
        return Err(ReleaseError::NoRoom { version: version.to_string(), dir: dir.to_path_buf(), need, free });
    }
    Ok(())
}

/// Creates the layout; whether the artifact is already here.
pub fn has_artifact(app: &App, sha256: &str) -> io::Result<bool> {
    app.create()?;
    Ok(app.artifact(sha256).is_file())
}

/// Installs from `artifacts/<sha>.tar.gz`. Returns false when it was already there.
pub fn from_artifact(app: &App, sha256: &str, version: &str, sums: &str) -> Result<bool, Failure> {
    if present(app, version, sha256)? {
        return Ok(false);
    }
    let artifact = app.artifact(sha256);
    let file = fs::File::open(&artifact).map_err(|e| format!("opening {}: {e}", artifact.display()))?;
    let staging = Staging::new(app, version).map_err(|e| e.to_string())?;
    unpack_checked(flate2::read::MultiGzDecoder::new(io::BufReader::new(file)), &staging, version, sums, 0)?;
    staging.keep(app, version, sha256).map_err(|e| e.to_string())?;
    Ok(true)
}

/// Installs from `input`: the artifact (kept under `artifacts/` for later installs)
/// or its plain tar stream, unpacked as it arrives. Returns false when the release
/// was already there (the input is then left unread).
pub fn from_stream(app: &App, input: impl Read, stream: &Parcel<'_>) -> Result<bool, Failure> {
    if present(app, stream.version, stream.sha256)? {
        return Ok(false);
    }
    app.create().map_err(|e| e.to_string())?;
    let staging = Staging::new(app, stream.version).map_err(|e| e.to_string())?;
    let mut counted = Counting { inner: input.take(stream.size), bytes: 0 };
    if stream.raw {
        unpack_checked(&mut counted, &staging, stream.version, stream.sums, 0)?;
        io::copy(&mut counted, &mut io::sink()).map_err(|e| e.to_string())?;
    } else {
        let part = app.artifacts().join(format!(".part-{}-{}", stream.sha256, std::process::id()));
        let kept = Part { path: part.clone() };
        let file = fs::File::create(&part).map_err(|e| format!("writing {}: {e}", part.display()))?;
        let mut tee = Tee { inner: &mut counted, copy: io::BufWriter::new(file) };
        let decoded = flate2::read::MultiGzDecoder::new(&mut tee);
        unpack_checked(decoded, &staging, stream.version, stream.sums, stream.size)?;
        io::copy(&mut tee, &mut io::sink()).map_err(|e| e.to_string())?;
        tee.copy.flush().map_err(|e| format!("writing {}: {e}", part.display()))?;
        drop(tee);
        if counted.bytes == stream.size {
            fs::rename(&part, app.artifact(stream.sha256)).map_err(|e| e.to_string())?;
        }
        drop(kept);
    }
    if counted.bytes != stream.size {
        return Err(format!(
            "the artifact arrived incomplete ({} of {} bytes; is the disk full? `df -h`)",
            counted.bytes, stream.size
        ));
    }
    staging.keep(app, stream.version, stream.sha256).map_err(|e| e.to_string())?;
    Ok(true)
}

/// Installs from `source`, another app directory of this machine holding the release
/// verified, as hard links (releases are never modified).
pub fn linked(app: &App, source: &App, sha256: &str, version: &str) -> Result<bool, Failure> {
    if present(app, version, sha256)? {
        return Ok(false);
    }
    if source.installed(version).is_none_or(|r| r.sha256 != sha256) {
        return Err(format!("{} holds no verified release {version} with this sha256", source.dir.display()));
    }
    app.create().map_err(|e| e.to_string())?;
    let staging = Staging::new(app, version).map_err(|e| e.to_string())?;
    link_tree(&source.release(version), &staging.dir).map_err(|e| e.to_string())?;
    let _ = fs::remove_file(staging.dir.join(RELEASE_FILE));
    let _ = fs::hard_link(source.artifact(sha256), app.artifact(sha256));
    staging.keep(app, version, sha256).map_err(|e| e.to_string())?;
    Ok(true)
}

/// Recreates `from` under `to` (which exists), files as hard links.
fn link_tree(from: &Path, to: &Path) -> io::Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            fs::create_dir(&target)?;
            link_tree(&source, &target)?;
            let mode = fs::metadata(&source)?.permissions().mode();
            fs::set_permissions(&target, fs::Permissions::from_mode(mode | 0o700))?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&source)?, &target)?;
        } else if entry.file_name() != RELEASE_FILE {
            fs::hard_link(&source, &target)?;
        }
    }
    Ok(())
}

/// Counts what passes through.
struct Counting<R> {
    inner: R,
    bytes: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Copies what is read to `copy`.
struct Tee<'a, R, W> {
    inner: &'a mut R,
    copy: W,
}

impl<R: Read, W: Write> Read for Tee<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// A partly received artifact, removed unless renamed into place.
struct Part {
    path: PathBuf,
}

impl Drop for Part {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A release of `files` packed by ferry itself: its gzip and plain tar, and sums.
    fn packed(files: &[(&str, &[u8])]) -> (tempfile::TempDir, PathBuf, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let rel = dir.path().join("rel");
        for (name, body) in files {
            let path = rel.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, body).unwrap();
        }
        let out = dir.path().join("hello-v1.tar.gz");
        let built = crate::release::pack(&rel, "hello", "v1", None, &out).unwrap();
        let sums = built.manifest.sha256sum_lines();
        (dir, out, built.sha256, sums)
    }

    fn app(dir: &Path) -> App {
        let app = App::new(dir.join("host/hello"));
        app.create().unwrap();
        app
    }

    #[test]
    fn a_streamed_release_is_unpacked_verified_read_only_and_its_artifact_kept() {
        let (dir, archive, sha, sums) = packed(&[("bin/start", b"#!/bin/sh\n"), ("lib/a.txt", b"a")]);
        let app = app(dir.path());
        let size = fs::metadata(&archive).unwrap().len();
        let stream = Parcel { sha256: &sha, version: "v1", size, raw: false, sums: &sums };
        assert!(from_stream(&app, fs::File::open(&archive).unwrap(), &stream).unwrap());
        assert_eq!(fs::read(app.release("v1").join("lib/a.txt")).unwrap(), b"a");
        assert!(app.artifact(&sha).is_file());
        let mode = fs::metadata(app.release("v1").join("lib/a.txt")).unwrap().permissions().mode();
        assert_eq!(mode & 0o222, 0, "read-only");
        assert!(!from_stream(&app, io::empty(), &stream).unwrap(), "a second time: already there");
        assert!(from_artifact(&app, &sha, "v1", &sums).is_ok());
        app.remove_release("v1").unwrap();
        assert!(!app.release("v1").exists(), "a read-only release can be pruned");
    }

    #[test]
    fn a_cut_short_stream_leaves_nothing_behind() {
        let big = vec![7u8; 100_000];
        let (dir, archive, sha, sums) = packed(&[("big.bin", &big)]);
        let app = app(dir.path());
        let bytes = fs::read(&archive).unwrap();
        let stream = Parcel { sha256: &sha, version: "v1", size: bytes.len() as u64, raw: false, sums: &sums };
        let err = from_stream(&app, &bytes[..bytes.len() / 2], &stream).unwrap_err();
        assert!(!err.is_empty());
        assert!(!app.release("v1").exists());
        let left: Vec<_> =
            fs::read_dir(app.releases()).unwrap().chain(fs::read_dir(app.artifacts()).unwrap()).collect();
        assert!(left.is_empty(), "no staging or partial file left: {left:?}");
    }

    #[test]
    fn other_contents_under_the_same_version_are_refused() {
        let (dir, archive, sha, sums) = packed(&[("a", b"1")]);
        let app = app(dir.path());
        let size = fs::metadata(&archive).unwrap().len();
        let stream = Parcel { sha256: &sha, version: "v1", size, raw: false, sums: &sums };
        from_stream(&app, fs::File::open(&archive).unwrap(), &stream).unwrap();
        let other = Parcel { sha256: "0000", ..stream };
        let err = from_stream(&app, io::empty(), &other).unwrap_err();
        assert!(err.contains("different contents"), "{err}");
    }

    #[test]
    fn sums_that_differ_from_the_archive_are_refused() {
        let (dir, archive, sha, _) = packed(&[("a", b"1")]);
        let app = app(dir.path());
        let size = fs::metadata(&archive).unwrap().len();
        let stream = Parcel { sha256: &sha, version: "v1", size, raw: false, sums: "0000  a\n" };
        let err = from_stream(&app, fs::File::open(&archive).unwrap(), &stream).unwrap_err();
        assert!(err.contains("does not match its manifest"), "{err}");
        assert!(!app.release("v1").exists());
    }

    #[test]
    fn a_linked_install_shares_the_files() {
        use std::os::unix::fs::MetadataExt;
        let (dir, archive, sha, sums) = packed(&[("a", b"1")]);
        let source = app(dir.path());
        let size = fs::metadata(&archive).unwrap().len();
        let stream = Parcel { sha256: &sha, version: "v1", size, raw: false, sums: &sums };
        from_stream(&source, fs::File::open(&archive).unwrap(), &stream).unwrap();
        let other = App::new(dir.path().join("host2/hello"));
        assert!(linked(&other, &source, &sha, "v1").unwrap());
        assert_eq!(other.installed("v1").unwrap().sha256, sha);
        let ino = |a: &App| fs::metadata(a.release("v1").join("a")).unwrap().ino();
        assert_eq!(ino(&source), ino(&other));
    }
}
