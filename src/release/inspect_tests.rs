use std::fs;
use std::path::PathBuf;

use tempfile::TempDir;

use super::*;
use crate::release::manifest::{EntryKind, Manifest, ManifestEntry, MANIFEST_NAME};
use crate::release::testutil::{gzip, listed_dir, listed_file, listed_symlink, sample_tree, Craft, Raw};
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

/// A header block and its data, padded to whole blocks.
fn block(header: &tar::Header, data: &[u8]) -> Vec<u8> {
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(data);
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    bytes
}

/// A plain tar: the manifest listing `listed`, then `blocks` as given, then the end.
fn odd_tar(listed: Vec<ManifestEntry>, blocks: &[Vec<u8>]) -> Vec<u8> {
    let manifest = Manifest { app: "hello".into(), version: "v1".into(), git_commit: None, files: listed };
    let json = serde_json::to_vec(&manifest).unwrap();
    let mut tar = block(&Raw::file(MANIFEST_NAME, &json).header(), &json);
    for b in blocks {
        tar.extend_from_slice(b);
    }
    tar.extend_from_slice(&[0; 1024]);
    tar
}

fn gnu(name: &[u8], kind: tar::EntryType, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(if kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
    header.set_cksum();
    header
}

/// Every path under `root` with its kind and size, as a manifest would list it.
fn tree(root: &std::path::Path, prefix: &str, out: &mut Vec<(String, EntryKind, u64)>) {
    let mut entries: Vec<_> = fs::read_dir(root).unwrap().flatten().collect();
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        let meta = fs::symlink_metadata(entry.path()).unwrap();
        if meta.is_dir() {
            out.push((name.clone(), EntryKind::Dir, 0));
            tree(&entry.path(), &format!("{name}/"), out);
        } else if meta.file_type().is_symlink() {
            out.push((name, EntryKind::Symlink, 0));
        } else {
            out.push((name, EntryKind::File, meta.len()));
        }
    }
}

#[test]
fn odd_headers_are_read_alike_by_the_check_and_the_unpacking() {
    use tar::EntryType::{Directory, GNULongName, Regular, XGlobalHeader, XHeader};
    let long = format!("d/{}", "x".repeat(150));
    let longname = |name: &[u8]| block(&gnu(b"././@LongLink", GNULongName, name.len() as u64), name);
    let mut base256 = gnu(b"a.txt", Regular, 5);
    base256.as_old_mut().size = [0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
    base256.set_cksum();
    let ustar = |prefix: &[u8], name: &[u8], kind: tar::EntryType, size: u64| {
        let mut header = tar::Header::new_ustar();
        header.as_ustar_mut().unwrap().prefix[..prefix.len()].copy_from_slice(prefix);
        header.as_ustar_mut().unwrap().name[..name.len()].copy_from_slice(name);
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(0o644);
        header.set_cksum();
        header
    };
    let pax = |kind: tar::EntryType, record: &str| {
        let line = format!("{} {record}\n", record.len() + 3);
        block(&gnu(b"pax", kind, line.len() as u64), line.as_bytes())
    };
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "a GNU long name",
            odd_tar(
                vec![listed_dir("d"), listed_file(&long, b"hello")],
                &[
                    block(&gnu(b"d/", Directory, 0), b""),
                    longname(format!("{long}\0").as_bytes()),
                    block(&gnu(&long.as_bytes()[..100], Regular, 5), b"hello"),
                ],
            ),
            true,
        ),
        (
            "a GNU long name hiding `..` after a NUL",
            odd_tar(
                vec![listed_file("a.txt", b"hello")],
                &[longname(b"a.txt\0../x\0"), block(&gnu(b"a.txt", Regular, 5), b"hello")],
            ),
            false,
        ),
        (
            "a ustar prefix",
            odd_tar(
                vec![listed_dir("d"), listed_file("d/b.txt", b"hello")],
                &[block(&gnu(b"d/", Directory, 0), b""), block(&ustar(b"d", b"b.txt", Regular, 5), b"hello")],
            ),
            true,
        ),
        (
            "a ustar prefix of `..`",
            odd_tar(vec![listed_file("../x", b"hello")], &[block(&ustar(b"..", b"x", Regular, 5), b"hello")]),
            false,
        ),
        (
            "a name field with bytes after its NUL",
            odd_tar(vec![listed_file("a.txt", b"hello")], &[block(&gnu(b"a.txt\0../evil", Regular, 5), b"hello")]),
            true,
        ),
        ("a base-256 size", odd_tar(vec![listed_file("a.txt", b"hello")], &[block(&base256, b"hello")]), true),
        (
            "a pax global header",
            odd_tar(
                vec![listed_file("a.txt", b"hello")],
                &[pax(XGlobalHeader, "path=evil"), block(&gnu(b"a.txt", Regular, 5), b"hello")],
            ),
            false,
        ),
        (
            "a pax size over the header's",
            odd_tar(
                vec![listed_file("a.txt", b"hello")],
                &[pax(XHeader, "size=1"), block(&gnu(b"a.txt", Regular, 5), b"hello")],
            ),
            false,
        ),
        (
            "a directory named twice, with and without its slash",
            odd_tar(
                vec![listed_dir("d")],
                &[block(&gnu(b"d/", Directory, 0), b""), block(&gnu(b"d", Directory, 0), b"")],
            ),
            false,
        ),
        (
            "a file entry whose name ends in a slash",
            odd_tar(vec![listed_file("x", b"")], &[block(&gnu(b"x/", Regular, 0), b"")]),
            false,
        ),
        (
            "data after a lone zero block",
            {
                let mut tar = odd_tar(vec![], &[]);
                tar.truncate(tar.len() - 1024);
                tar.extend_from_slice(&[0; 512]);
                tar.extend_from_slice(&block(&gnu(b"late", Regular, 0), b""));
                tar.extend_from_slice(&[0; 1024]);
                tar
            },
            false,
        ),
    ];
    let fixture = Fixture::new();
    for (what, tar, accepted) in cases {
        let inspected = fixture.inspect_bytes(&gzip(&tar));
        let dest = fixture.dir.path().join("out");
        let _ = fs::remove_dir_all(&dest);
        fs::create_dir(&dest).unwrap();
        let unpacked = unpack(tar.as_slice(), &dest, std::path::Path::new("odd"), &mut |_| Ok(()));
        assert_eq!(inspected.is_ok(), accepted, "{what}: inspect gave {inspected:?}");
        assert_eq!(unpacked.is_ok(), accepted, "{what}: unpack gave {unpacked:?}");
        if let Ok(manifest) = unpacked {
            let mut found = Vec::new();
            tree(&dest, "", &mut found);
            let mut listed: Vec<_> = manifest.files.iter().map(|e| (e.path.clone(), e.kind, e.size)).collect();
            listed.push((
                MANIFEST_NAME.to_string(),
                EntryKind::File,
                fs::metadata(dest.join(MANIFEST_NAME)).unwrap().len(),
            ));
            listed.sort_by(|a, b| a.0.cmp(&b.0));
            found.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(found, listed, "{what}: exactly what was checked is on disk");
        }
    }
}

#[test]
fn nothing_more_than_the_manifest_lists_is_written_and_room_is_judged_first() {
    let fixture = Fixture::new();
    let dest = fixture.dir.path().join("out");
    fs::create_dir(&dest).unwrap();
    // Listed as 5 bytes, 1 MiB in the archive: refused before its data is written.
    let big = vec![7u8; 1 << 20];
    let tar = odd_tar(
        vec![listed_file("a.txt", b"hello")],
        &[block(&gnu(b"a.txt", tar::EntryType::Regular, big.len() as u64), &big)],
    );
    let refused = unpack(tar.as_slice(), &dest, std::path::Path::new("t"), &mut |_| Ok(()));
    assert!(matches!(refused, Err(ReleaseError::ManifestMismatch { .. })), "{refused:?}");
    assert!(!dest.join("a.txt").exists());
    // A room check that says no stops it after the manifest.
    let dest = fixture.dir.path().join("out2");
    fs::create_dir(&dest).unwrap();
    let tar =
        odd_tar(vec![listed_file("a.txt", b"hello")], &[block(&gnu(b"a.txt", tar::EntryType::Regular, 5), b"hello")]);
    let full = |_: &Manifest| Err(ReleaseError::NoRoom { version: "v1".into(), dir: dest.clone(), need: 9, free: 1 });
    let refused = unpack(tar.as_slice(), &dest, std::path::Path::new("t"), &mut { full });
    assert!(matches!(refused, Err(ReleaseError::NoRoom { .. })), "{refused:?}");
    assert_eq!(fs::read_dir(&dest).unwrap().count(), 1, "only the manifest was written");
}
