use std::fs;
use std::path::PathBuf;

use tempfile::TempDir;

use super::*;
use crate::release::testutil::{gzip, listed_file, listed_symlink, sample_tree, Craft, Raw};
use crate::release::{pack, sha256_file};

struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture { dir: tempfile::tempdir().unwrap() }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("release.tar.gz")
    }

    fn inspect(&self, craft: &Craft) -> Result<Inspected, ReleaseError> {
        craft.write(&self.path());
        inspect(&self.path())
    }

    fn inspect_bytes(&self, bytes: &[u8]) -> Result<Inspected, ReleaseError> {
        fs::write(self.path(), bytes).unwrap();
        inspect(&self.path())
    }
}

#[track_caller]
fn assert_unsafe(result: Result<Inspected, ReleaseError>, expected_entry: &str, reason_part: &str) {
    match result {
        Err(ReleaseError::UnsafeEntry { entry, reason, .. }) => {
            assert_eq!(entry, expected_entry);
            assert!(reason.contains(reason_part), "reason: {reason}");
        }
        other => panic!("expected an unsafe entry `{expected_entry}`, got {other:?}"),
    }
}

#[track_caller]
fn assert_mismatch(result: Result<Inspected, ReleaseError>, expected_entry: &str, detail_part: &str) {
    match result {
        Err(ReleaseError::ManifestMismatch { entry, detail, .. }) => {
            assert_eq!(entry, expected_entry);
            assert!(detail.contains(detail_part), "detail: {detail}");
        }
        other => panic!("expected a manifest mismatch on `{expected_entry}`, got {other:?}"),
    }
}

#[track_caller]
fn assert_not_a_release(result: Result<Inspected, ReleaseError>, reason_part: &str) {
    match result {
        Err(ReleaseError::NotARelease { reason, .. }) => assert!(reason.contains(reason_part), "reason: {reason}"),
        other => panic!("expected not a release, got {other:?}"),
    }
}

#[test]
fn a_packed_release_passes_with_its_sha256_size_and_manifest() {
    let fixture = Fixture::new();
    let src = fixture.dir.path().join("rel");
    sample_tree(&src);
    let built = pack(&src, "hello", "v2", None, &fixture.path()).unwrap();
    let inspected = inspect(&built.path).unwrap();
    assert_eq!(inspected, Inspected { sha256: built.sha256, size: built.size, manifest: built.manifest });
}

#[test]
fn a_crafted_valid_release_passes() {
    let fixture = Fixture::new();
    let inspected = fixture.inspect(&Craft::valid()).unwrap();
    assert_eq!(inspected.manifest.files.len(), 4);
    assert_eq!(inspected.sha256, sha256_file(&fixture.path()).unwrap());
    assert_eq!(inspected.size, fs::metadata(fixture.path()).unwrap().len());
}

#[test]
fn an_entry_climbing_out_with_dot_dot_is_refused() {
    let fixture = Fixture::new();
    let craft = Craft::valid().entry(Raw::file("../evil", b"x"), listed_file("../evil", b"x"));
    assert_unsafe(fixture.inspect(&craft), "../evil", "`..`");
    let craft = Craft::valid().raw(Raw::file("d/../../evil", b"x"));
    assert_unsafe(fixture.inspect(&craft), "d/../../evil", "`..`");
}

#[test]
fn an_absolute_entry_is_refused() {
    let fixture = Fixture::new();
    assert_unsafe(fixture.inspect(&Craft::valid().raw(Raw::file("/etc/evil", b"x"))), "/etc/evil", "absolute");
}

#[test]
fn a_hard_link_is_refused() {
    let fixture = Fixture::new();
    let craft = Craft::valid().raw(Raw::link("hard", tar::EntryType::Link, "a.txt"));
    assert_unsafe(fixture.inspect(&craft), "hard", "hard links");
}

#[test]
fn fifos_and_devices_are_refused() {
    let fixture = Fixture::new();
    let fifo = Raw { kind: tar::EntryType::Fifo, ..Raw::file("fifo", b"") };
    assert_unsafe(fixture.inspect(&Craft::valid().raw(fifo)), "fifo", "not allowed");
    let device = Raw { kind: tar::EntryType::Char, ..Raw::file("null", b"") };
    assert_unsafe(fixture.inspect(&Craft::valid().raw(device)), "null", "not allowed");
}

#[test]
fn symlinks_leaving_the_release_are_refused() {
    let fixture = Fixture::new();
    for target in ["../../etc", "/etc/passwd", "a.txt/../../x"] {
        let craft =
            Craft::valid().entry(Raw::link("d/up", tar::EntryType::Symlink, target), listed_symlink("d/up", target));
        assert_unsafe(fixture.inspect(&craft), "d/up", "target");
    }
}

#[test]
fn an_entry_beneath_a_symlink_is_refused() {
    let fixture = Fixture::new();
    let craft = Craft::valid()
        .entry(Raw::link("s", tar::EntryType::Symlink, "d"), listed_symlink("s", "d"))
        .entry(Raw::file("s/x", b"x"), listed_file("s/x", b"x"));
    assert_unsafe(fixture.inspect(&craft), "s/x", "parent `s`");
}

#[test]
fn a_repeated_entry_is_refused() {
    let fixture = Fixture::new();
    assert_unsafe(fixture.inspect(&Craft::valid().raw(Raw::file("a.txt", b"other"))), "a.txt", "more than once");
    let second_manifest = Craft::valid().raw(Raw::file(MANIFEST_NAME, b"{}"));
    assert_unsafe(fixture.inspect(&second_manifest), MANIFEST_NAME, "more than once");
}

#[test]
fn setuid_modes_are_refused() {
    let fixture = Fixture::new();
    let raw = Raw { mode: 0o4755, ..Raw::file("suid", b"x") };
    let listed = ManifestEntry { mode: 0o4755, ..listed_file("suid", b"x") };
    assert_unsafe(fixture.inspect(&Craft::valid().entry(raw, listed)), "suid", "setuid");
}

#[test]
fn pax_headers_are_refused() {
    let fixture = Fixture::new();
    let pax = Raw { kind: tar::EntryType::XHeader, ..Raw::file("pax", b"16 path=../evil\n") };
    let craft = Craft::valid().raw(pax).raw(Raw::file("innocent", b"x"));
    assert_unsafe(fixture.inspect(&craft), "../evil", "pax");
}

#[test]
fn an_entry_name_with_a_newline_is_refused_and_shown_escaped() {
    let fixture = Fixture::new();
    let err = fixture.inspect(&Craft::valid().raw(Raw::file("a\nb", b""))).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("`a\\nb`"), "{message}");
    assert!(!message.contains('\n'), "{message}");
}

#[test]
fn a_tampered_file_in_a_packed_release_is_detected() {
    let fixture = Fixture::new();
    let src = fixture.dir.path().join("rel");
    sample_tree(&src);
    let built = pack(&src, "hello", "v2", None, &fixture.path()).unwrap();

    let mut tar_bytes = Vec::new();
    flate2::read::MultiGzDecoder::new(File::open(&built.path).unwrap()).read_to_end(&mut tar_bytes).unwrap();
    let at = tar_bytes.windows(11).position(|w| w == b"port = 8080").unwrap();
    tar_bytes[at..at + 11].copy_from_slice(b"port = 6666");

    assert_mismatch(fixture.inspect_bytes(&gzip(&tar_bytes)), "lib/app/config.txt", "sha256");
}

#[test]
fn entries_in_later_gzip_members_are_read_and_checked() {
    let fixture = Fixture::new();
    let craft = Craft::valid()
        .entry(Raw::file("e.txt", b"one"), listed_file("e.txt", b"one"))
        .entry(Raw::file("f.txt", b"two"), listed_file("f.txt", b"two"));
    let tar_bytes = craft.tar_bytes();
    // Split inside the manifest's data, so every other entry is in the second member.
    let members = |tar_bytes: &[u8]| [gzip(&tar_bytes[..700]), gzip(&tar_bytes[700..])].concat();
    let inspected = fixture.inspect_bytes(&members(&tar_bytes)).unwrap();
    assert_eq!(inspected.manifest.files.len(), 6);

    let mut tampered = tar_bytes.clone();
    let at = tampered.windows(3).position(|w| w == b"two").unwrap();
    tampered[at..at + 3].copy_from_slice(b"TWO");
    assert_mismatch(fixture.inspect_bytes(&members(&tampered)), "f.txt", "sha256");
}

#[test]
fn a_file_differing_from_its_manifest_entry_is_detected() {
    let fixture = Fixture::new();
    let craft = Craft::valid().entry(Raw::file("c.txt", b"HELLO"), listed_file("c.txt", b"hello"));
    assert_mismatch(fixture.inspect(&craft), "c.txt", "has sha256");

    let craft = Craft::valid().entry(Raw::file("c.txt", b"hello!"), listed_file("c.txt", b"hello"));
    assert_mismatch(fixture.inspect(&craft), "c.txt", "has 6 bytes but the manifest says 5");

    let listed = ManifestEntry { mode: 0o755, ..listed_file("c.txt", b"hello") };
    let craft = Craft::valid().entry(Raw::file("c.txt", b"hello"), listed);
    assert_mismatch(fixture.inspect(&craft), "c.txt", "has mode 644 but the manifest says 755");

    let craft = Craft::valid().entry(Raw::link("l", tar::EntryType::Symlink, "a.txt"), listed_symlink("l", "d"));
    assert_mismatch(fixture.inspect(&craft), "l", "points to `a.txt` but the manifest says `d`");
}

#[test]
fn entries_missing_from_the_manifest_or_the_archive_are_detected() {
    let fixture = Fixture::new();
    assert_mismatch(fixture.inspect(&Craft::valid().raw(Raw::file("extra", b""))), "extra", "not listed");
    assert_mismatch(
        fixture.inspect(&Craft::valid().list(listed_file("gone", b"x"))),
        "gone",
        "missing from the archive",
    );
    let twice = Craft::valid().list(listed_file("a.txt", b"hello"));
    assert_mismatch(fixture.inspect(&twice), "a.txt", "listed twice");
}

#[test]
fn an_archive_not_starting_with_a_manifest_is_not_a_release() {
    let fixture = Fixture::new();
    let mut builder = tar::Builder::new(Vec::new());
    let raw = Raw::file("a.txt", b"hello");
    builder.append(&raw.header(), raw.data.as_slice()).unwrap();
    let bytes = gzip(&builder.into_inner().unwrap());
    assert_not_a_release(fixture.inspect_bytes(&bytes), "its first entry is `a.txt`");

    let empty = gzip(&tar::Builder::new(Vec::new()).into_inner().unwrap());
    assert_not_a_release(fixture.inspect_bytes(&empty), "no entries");
}

#[test]
fn a_manifest_with_an_unsafe_version_is_not_a_release() {
    let fixture = Fixture::new();
    assert_not_a_release(fixture.inspect(&Craft::valid().version("../../etc")), "invalid version");
}

#[test]
fn data_after_the_end_of_the_archive_is_refused() {
    let fixture = Fixture::new();
    let valid = Craft::valid();

    // `tar -xzf` reads on into a second gzip member; so does inspection.
    let mut two_members = gzip(&valid.tar_bytes());
    two_members.extend(gzip(&Raw::file("evil", b"x").header().as_bytes()[..]));
    assert_not_a_release(fixture.inspect_bytes(&two_members), "after its end-of-archive marker");

    let mut garbage = gzip(&valid.tar_bytes());
    garbage.extend_from_slice(b"not gzip");
    let err = fixture.inspect_bytes(&garbage).unwrap_err();
    assert!(matches!(err, ReleaseError::CorruptArchive { .. }), "{err:?}");

    let mut after_marker = valid.tar_bytes();
    after_marker.extend_from_slice(Raw::file("evil", b"").header().as_bytes());
    assert_not_a_release(fixture.inspect_bytes(&gzip(&after_marker)), "after its end-of-archive marker");
}

#[test]
fn a_file_that_is_not_gzip_is_reported_as_corrupt() {
    let fixture = Fixture::new();
    let err = fixture.inspect_bytes(b"hello, not an archive").unwrap_err();
    assert!(matches!(err, ReleaseError::CorruptArchive { .. }), "{err:?}");

    let mut truncated = gzip(&Craft::valid().tar_bytes());
    truncated.truncate(truncated.len() / 2);
    let err = fixture.inspect_bytes(&truncated).unwrap_err();
    assert!(matches!(err, ReleaseError::CorruptArchive { .. }), "{err:?}");
}

#[test]
fn a_missing_tarball_is_a_usage_error_naming_it() {
    let fixture = Fixture::new();
    let err = inspect(&fixture.path()).unwrap_err();
    assert!(err.is_usage());
    assert_eq!(err.to_string(), format!("release archive `{}` does not exist", fixture.path().display()));
}
