use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::process::Command;
use std::time::{Duration, SystemTime};

use tempfile::TempDir;

use super::*;
use crate::release::testutil::{noise, sample_tree, sha256_hex, text};
use crate::release::{inspect, sha256_file};

struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("rel")).unwrap();
        fs::create_dir(dir.path().join("out")).unwrap();
        Fixture { dir }
    }

    fn sample() -> Fixture {
        let fixture = Fixture::new();
        sample_tree(&fixture.src());
        fixture
    }

    fn src(&self) -> PathBuf {
        self.dir.path().join("rel")
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join("out").join(name)
    }

    fn pack(&self, name: &str) -> Result<Built, ReleaseError> {
        pack(&self.src(), "hello", "v1.0.0", Some("abc123".into()), &self.out(name))
    }
}

fn system_tar(args: &[&str]) -> String {
    let output = Command::new("tar").args(args).output().unwrap();
    assert!(output.status.success(), "tar {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn archive_headers(path: &Path) -> Vec<(String, EntryType, u32, u64, u64, u64, u64)> {
    let gz = flate2::read::MultiGzDecoder::new(File::open(path).unwrap());
    let mut archive = tar::Archive::new(gz);
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let h = entry.header();
            let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            (
                name,
                h.entry_type(),
                h.mode().unwrap(),
                h.mtime().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                h.size().unwrap(),
            )
        })
        .collect()
}

#[test]
fn packing_the_same_tree_twice_gives_identical_bytes_despite_new_times_and_umask_modes() {
    let fixture = Fixture::sample();
    let first = fixture.pack("first.tar.gz").unwrap();

    let src = fixture.src();
    let later = SystemTime::now() + Duration::from_hours(1);
    for file in ["README", "bin/run", "lib/app/config.txt"] {
        File::options().write(true).open(src.join(file)).unwrap().set_modified(later).unwrap();
    }
    fs::set_permissions(src.join("README"), fs::Permissions::from_mode(0o664)).unwrap();
    fs::set_permissions(src.join("bin/run"), fs::Permissions::from_mode(0o755)).unwrap();
    let second = fixture.pack("second.tar.gz").unwrap();

    assert_eq!(first.sha256, second.sha256);
    assert_eq!(fs::read(&first.path).unwrap(), fs::read(&second.path).unwrap());
}

#[test]
fn packing_a_changed_file_changes_the_sha256() {
    let fixture = Fixture::sample();
    let first = fixture.pack("first.tar.gz").unwrap();
    fs::write(fixture.src().join("README"), "hello!\n").unwrap();
    let second = fixture.pack("second.tar.gz").unwrap();
    assert_ne!(first.sha256, second.sha256);
}

#[test]
fn pack_reports_the_sha256_and_size_of_the_written_file() {
    let fixture = Fixture::sample();
    let built = fixture.pack("r.tar.gz").unwrap();
    assert_eq!(built.path, fixture.out("r.tar.gz"));
    assert_eq!(built.sha256, sha256_file(&built.path).unwrap());
    assert_eq!(built.size, fs::metadata(&built.path).unwrap().len());
    assert_eq!(built.version, "v1.0.0");
    assert!(!fixture.out("r.tar.gz.tmp").exists());
}

#[test]
fn manifest_lists_every_entry_with_sizes_hashes_modes_and_targets() {
    let fixture = Fixture::sample();
    let built = fixture.pack("r.tar.gz").unwrap();
    let manifest = &built.manifest;
    assert_eq!((manifest.app.as_str(), manifest.version.as_str()), ("hello", "v1.0.0"));
    assert_eq!(manifest.git_commit.as_deref(), Some("abc123"));

    let file = |path: &str, data: &str, mode| ManifestEntry {
        path: path.into(),
        kind: EntryKind::File,
        size: data.len() as u64,
        sha256: Some(sha256_hex(data.as_bytes())),
        mode,
        target: None,
    };
    let dir = |path: &str| ManifestEntry {
        path: path.into(),
        kind: EntryKind::Dir,
        size: 0,
        sha256: None,
        mode: 0o755,
        target: None,
    };
    let link = |path: &str, target: &str| ManifestEntry {
        path: path.into(),
        kind: EntryKind::Symlink,
        size: 0,
        sha256: None,
        mode: 0o777,
        target: Some(target.into()),
    };
    assert_eq!(
        manifest.files,
        vec![
            file("README", "hello\n", 0o644),
            dir("bin"),
            link("bin/config", "../lib/app/config.txt"),
            file("bin/run", "#!/bin/sh\necho hello\n", 0o755),
            link("current", "lib/app"),
            dir("lib"),
            dir("lib/app"),
            file("lib/app/config.txt", "port = 8080\n", 0o644),
            file("lib/empty", "", 0o644),
        ]
    );
}

#[test]
fn archive_starts_with_the_manifest_and_has_sorted_entries_with_fixed_metadata() {
    let fixture = Fixture::sample();
    let built = fixture.pack("r.tar.gz").unwrap();
    let headers = archive_headers(&built.path);

    let names: Vec<&str> = headers.iter().map(|h| h.0.as_str()).collect();
    assert_eq!(
        names,
        [
            MANIFEST_NAME,
            "README",
            "bin/",
            "bin/config",
            "bin/run",
            "current",
            "lib/",
            "lib/app/",
            "lib/app/config.txt",
            "lib/empty"
        ]
    );
    for (name, _, _, mtime, uid, gid, _) in &headers {
        assert_eq!((*mtime, *uid, *gid), (ARCHIVE_MTIME, 0, 0), "{name}");
    }
    let kind_and_mode = |name: &str| headers.iter().find(|h| h.0 == name).map(|h| (h.1, h.2)).unwrap();
    assert_eq!(kind_and_mode(MANIFEST_NAME), (EntryType::Regular, 0o644));
    assert_eq!(kind_and_mode("bin/"), (EntryType::Directory, 0o755));
    assert_eq!(kind_and_mode("bin/run"), (EntryType::Regular, 0o755));
    assert_eq!(kind_and_mode("lib/app/config.txt"), (EntryType::Regular, 0o644));
    assert_eq!(kind_and_mode("current"), (EntryType::Symlink, 0o777));

    let gz = fs::read(&built.path).unwrap();
    assert_eq!(gz[3], 0, "gzip header flags: no file name, comment or extra field");
    assert_eq!(gz[4..8], [0, 0, 0, 0], "gzip header mtime");
}

#[test]
fn manifest_entry_in_the_archive_is_the_returned_manifest() {
    let fixture = Fixture::sample();
    let built = fixture.pack("r.tar.gz").unwrap();
    let gz = flate2::read::MultiGzDecoder::new(File::open(&built.path).unwrap());
    let mut archive = tar::Archive::new(gz);
    let first = archive.entries().unwrap().next().unwrap().unwrap();
    let manifest: Manifest = serde_json::from_reader(first).unwrap();
    assert_eq!(manifest, built.manifest);
}

#[test]
fn system_tar_lists_and_extracts_the_archive_with_modes_and_links() {
    let fixture = Fixture::sample();
    let built = fixture.pack("r.tar.gz").unwrap();
    let archive = built.path.to_str().unwrap();

    let listing = system_tar(&["-tzf", archive]);
    assert_eq!(listing.lines().next(), Some(MANIFEST_NAME));
    assert!(listing.lines().any(|l| l == "lib/app/config.txt"), "{listing}");

    let dest = fixture.dir.path().join("extracted");
    fs::create_dir(&dest).unwrap();
    system_tar(&["-xpzf", archive, "-C", dest.to_str().unwrap()]);
    let mode = |path: &str| fs::symlink_metadata(dest.join(path)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("bin/run"), 0o755);
    assert_eq!(mode("README"), 0o644);
    assert_eq!(mode("lib/app"), 0o755);
    assert_eq!(fs::read_link(dest.join("current")).unwrap(), Path::new("lib/app"));
    assert_eq!(fs::read_to_string(dest.join("bin/config")).unwrap(), "port = 8080\n");

    let check = Command::new("sha256sum")
        .args(["-c", "--strict", "--quiet", "-"])
        .current_dir(&dest)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            io::Write::write_all(&mut child.stdin.take().unwrap(), built.manifest.sha256sum_lines().as_bytes())?;
            child.wait()
        })
        .unwrap();
    assert!(check.success(), "sha256sum -c failed on the extracted release");
}

/// The sample tree plus a compressible "binary" and random assets, some of odd sizes:
/// several compression chunks, some mixing random and compressible data.
fn several_chunks_tree(root: &Path) {
    sample_tree(root);
    fs::write(root.join("bin/app"), text(1_500_000, 1)).unwrap();
    fs::create_dir(root.join("lib/assets")).unwrap();
    for (seed, size) in [700_000, 1_300_000, 65_537, 999].into_iter().enumerate() {
        fs::write(root.join(format!("lib/assets/blob{seed}")), noise(size, seed as u64)).unwrap();
    }
}

#[test]
fn the_archive_does_not_depend_on_the_number_of_compression_workers() {
    let fixture = Fixture::new();
    several_chunks_tree(&fixture.src());
    let pack = |workers, name| {
        let workers = NonZeroUsize::new(workers).unwrap();
        pack_with_workers(&fixture.src(), "hello", "v1", None, &fixture.out(name), workers).unwrap()
    };
    let one = pack(1, "one.tar.gz");
    let four = pack(4, "four.tar.gz");
    assert!(one.manifest.files.iter().map(|f| f.size).sum::<u64>() > 3 << 20, "the tree spans several chunks");
    assert_eq!(one.sha256, four.sha256);
    assert_eq!(one.size, four.size);
    assert!(fs::read(&one.path).unwrap() == fs::read(&four.path).unwrap(), "the archives differ");
}

#[test]
fn system_tar_extracts_an_archive_of_several_chunks_intact() {
    let fixture = Fixture::new();
    several_chunks_tree(&fixture.src());
    let built = fixture.pack("r.tar.gz").unwrap();
    let archive = built.path.to_str().unwrap();
    let gzip_test = Command::new("gzip").args(["-t", archive]).output().unwrap();
    assert!(gzip_test.status.success(), "gzip -t: {}", String::from_utf8_lossy(&gzip_test.stderr));

    let dest = fixture.dir.path().join("extracted");
    fs::create_dir(&dest).unwrap();
    system_tar(&["-xzf", archive, "-C", dest.to_str().unwrap()]);
    let files: Vec<_> = built.manifest.files.iter().filter(|e| e.kind == EntryKind::File).collect();
    assert_eq!(files.len(), 9);
    for file in files {
        let (extracted, original) =
            (fs::read(dest.join(&file.path)).unwrap(), fs::read(fixture.src().join(&file.path)).unwrap());
        assert!(extracted == original, "`{}` was extracted with other contents", file.path);
    }
}

#[test]
fn random_assets_cost_little_more_than_their_size() {
    let fixture = Fixture::new();
    let src = fixture.src();
    for seed in 0..4 {
        fs::write(src.join(format!("blob{seed}")), noise(800_000, seed)).unwrap();
    }
    let built = fixture.pack("r.tar.gz").unwrap();
    assert!(built.size < 3_200_000 + 10_000, "{} bytes", built.size);
}

#[test]
fn long_paths_and_link_targets_survive_packing_and_inspection() {
    let fixture = Fixture::new();
    let src = fixture.src();
    let deep = ["a".repeat(60), "b".repeat(60), "c".repeat(60)].join("/");
    fs::create_dir_all(src.join(&deep)).unwrap();
    let file = format!("{deep}/{}.txt", "d".repeat(80));
    fs::write(src.join(&file), "deep\n").unwrap();
    symlink(format!("./{file}"), src.join("link")).unwrap();

    let built = fixture.pack("r.tar.gz").unwrap();
    let link = built.manifest.files.iter().find(|e| e.path == "link").unwrap();
    assert_eq!(link.target.as_deref(), Some(file.as_str()));
    assert_eq!(inspect(&built.path).unwrap().manifest, built.manifest);

    let listing = system_tar(&["-tzf", built.path.to_str().unwrap()]);
    assert!(listing.lines().any(|l| l == file), "{listing}");
}

#[test]
fn symlinks_inside_the_release_are_kept_as_symlinks() {
    let fixture = Fixture::sample();
    let built = fixture.pack("r.tar.gz").unwrap();
    let gz = flate2::read::MultiGzDecoder::new(File::open(&built.path).unwrap());
    let mut archive = tar::Archive::new(gz);
    let link =
        archive.entries().unwrap().map(Result::unwrap).find(|e| e.path_bytes().as_ref() == b"bin/config").unwrap();
    assert_eq!(link.header().entry_type(), EntryType::Symlink);
    assert_eq!(link.link_name_bytes().unwrap().as_ref(), b"../lib/app/config.txt");
}

#[test]
fn a_symlink_leaving_the_release_is_refused() {
    let fixture = Fixture::sample();
    symlink("../../../etc/passwd", fixture.src().join("lib/app/escape")).unwrap();
    let err = fixture.pack("r.tar.gz").unwrap_err();
    assert!(
        matches!(&err, ReleaseError::UnsafeSymlink { path, target }
            if path.ends_with("lib/app/escape") && target == Path::new("../../../etc/passwd")),
        "{err}"
    );
    assert!(!fixture.out("r.tar.gz").exists() && !fixture.out("r.tar.gz.tmp").exists());
}

#[test]
fn an_absolute_symlink_is_refused_even_when_it_points_inside() {
    let fixture = Fixture::sample();
    let inside = fixture.src().join("README");
    symlink(&inside, fixture.src().join("abs")).unwrap();
    let err = fixture.pack("r.tar.gz").unwrap_err();
    assert!(matches!(&err, ReleaseError::UnsafeSymlink { target, .. } if *target == inside), "{err}");
    assert!(err.to_string().starts_with("symlink `"), "{err}");
}

#[test]
fn sockets_and_fifos_are_refused() {
    let fixture = Fixture::sample();
    let socket = fixture.src().join("lib/app.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let err = fixture.pack("r.tar.gz").unwrap_err();
    assert!(matches!(&err, ReleaseError::UnsupportedFileType { path } if *path == socket), "{err}");
    fs::remove_file(&socket).unwrap();

    let fifo = fixture.src().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let err = fixture.pack("r.tar.gz").unwrap_err();
    assert!(matches!(&err, ReleaseError::UnsupportedFileType { path } if *path == fifo), "{err}");
}

#[test]
fn a_tree_with_its_own_manifest_file_is_refused() {
    let fixture = Fixture::sample();
    fs::write(fixture.src().join(MANIFEST_NAME), "{}").unwrap();
    let err = fixture.pack("r.tar.gz").unwrap_err();
    assert!(matches!(err, ReleaseError::ReservedName { .. }), "{err}");
    fs::remove_file(fixture.src().join(MANIFEST_NAME)).unwrap();
    // Refused when packing, not by every host once it arrives.
    fs::write(fixture.src().join(".ferry-release"), "{}").unwrap();
    let err = fixture.pack("r.tar.gz").unwrap_err();
    assert!(matches!(&err, ReleaseError::ReservedName { name, .. } if name == ".ferry-release"), "{err}");
}

#[test]
fn a_nested_file_named_like_the_manifest_is_fine() {
    let fixture = Fixture::sample();
    fs::write(fixture.src().join("lib").join(MANIFEST_NAME), "{}").unwrap();
    fixture.pack("r.tar.gz").unwrap();
}

#[test]
fn a_missing_release_directory_is_named() {
    let fixture = Fixture::new();
    let missing = fixture.dir.path().join("_build/prod/rel/hello");
    let err = pack(&missing, "hello", "v1", None, &fixture.out("r.tar.gz")).unwrap_err();
    assert!(err.is_usage());
    assert_eq!(
        err.to_string(),
        format!("release directory `{}` does not exist or is not a directory", missing.display())
    );

    let file = fixture.dir.path().join("file");
    fs::write(&file, "").unwrap();
    let err = pack(&file, "hello", "v1", None, &fixture.out("r.tar.gz")).unwrap_err();
    assert!(matches!(err, ReleaseError::SourceNotFound { .. }), "{err}");
}

#[test]
fn names_with_newlines_or_backslashes_are_refused() {
    for name in ["bad\nname", "bad\\name"] {
        let fixture = Fixture::sample();
        fs::write(fixture.src().join("lib").join(name), "").unwrap();
        let err = fixture.pack("r.tar.gz").unwrap_err();
        assert!(matches!(err, ReleaseError::UnsupportedName { .. }), "{name:?}: {err}");
        assert!(!err.to_string().contains('\n'), "{err}");
    }
}

#[test]
fn an_output_inside_the_release_directory_is_refused() {
    let fixture = Fixture::sample();
    let err = pack(&fixture.src(), "hello", "v1", None, &fixture.src().join("dist/r.tar.gz")).unwrap_err();
    assert!(matches!(err, ReleaseError::OutputInsideSource { .. }), "{err}");
}

#[test]
fn an_invalid_version_is_refused_before_packing() {
    let fixture = Fixture::sample();
    let err = pack(&fixture.src(), "hello", "../v1", None, &fixture.out("r.tar.gz")).unwrap_err();
    assert!(matches!(err, ReleaseError::InvalidVersion { .. }), "{err}");
}

#[test]
fn an_empty_release_directory_packs_to_just_the_manifest() {
    let fixture = Fixture::new();
    let built = fixture.pack("r.tar.gz").unwrap();
    assert!(built.manifest.files.is_empty());
    assert_eq!(archive_headers(&built.path).len(), 1);
    assert_eq!(inspect(&built.path).unwrap().sha256, built.sha256);
}
