//! Test helpers: a sample release tree, and hand-crafted archives whose raw headers can
//! say things `tar::Builder` would refuse to write (`..`, absolute paths, hard links).

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use super::manifest::{EntryKind, Manifest, ManifestEntry, MANIFEST_NAME};

/// A small release: an executable, plain files, nested directories and inside symlinks.
pub(crate) fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("lib/app")).unwrap();
    fs::write(root.join("bin/run"), "#!/bin/sh\necho hello\n").unwrap();
    fs::set_permissions(root.join("bin/run"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(root.join("lib/app/config.txt"), "port = 8080\n").unwrap();
    fs::set_permissions(root.join("lib/app/config.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(root.join("lib/empty"), "").unwrap();
    fs::write(root.join("README"), "hello\n").unwrap();
    symlink("../lib/app/config.txt", root.join("bin/config")).unwrap();
    symlink("lib/app", root.join("current")).unwrap();
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// One raw archive entry, written exactly as given.
pub(crate) struct Raw {
    pub name: Vec<u8>,
    pub kind: EntryType,
    pub mode: u32,
    pub data: Vec<u8>,
    pub link: Vec<u8>,
}

impl Raw {
    pub(crate) fn file(name: &str, data: &[u8]) -> Raw {
        Raw { name: name.into(), kind: EntryType::Regular, mode: 0o644, data: data.to_vec(), link: Vec::new() }
    }

    pub(crate) fn dir(name: &str) -> Raw {
        Raw {
            name: format!("{name}/").into(),
            kind: EntryType::Directory,
            mode: 0o755,
            data: Vec::new(),
            link: Vec::new(),
        }
    }

    pub(crate) fn link(name: &str, kind: EntryType, target: &str) -> Raw {
        let mode = if kind == EntryType::Symlink { 0o777 } else { 0o644 };
        Raw { name: name.into(), kind, mode, data: Vec::new(), link: target.into() }
    }

    pub(crate) fn header(&self) -> Header {
        let mut header = Header::new_gnu();
        let old = header.as_old_mut();
        old.name[..self.name.len()].copy_from_slice(&self.name);
        old.linkname[..self.link.len()].copy_from_slice(&self.link);
        header.set_entry_type(self.kind);
        header.set_size(self.data.len() as u64);
        header.set_mode(self.mode);
        header.set_mtime(946_684_800);
        header.set_cksum();
        header
    }
}

pub(crate) fn listed_file(path: &str, data: &[u8]) -> ManifestEntry {
    ManifestEntry {
        path: path.into(),
        kind: EntryKind::File,
        size: data.len() as u64,
        sha256: Some(sha256_hex(data)),
        mode: 0o644,
        target: None,
    }
}

pub(crate) fn listed_dir(path: &str) -> ManifestEntry {
    ManifestEntry { path: path.into(), kind: EntryKind::Dir, size: 0, sha256: None, mode: 0o755, target: None }
}

pub(crate) fn listed_symlink(path: &str, target: &str) -> ManifestEntry {
    ManifestEntry {
        path: path.into(),
        kind: EntryKind::Symlink,
        size: 0,
        sha256: None,
        mode: 0o777,
        target: Some(target.into()),
    }
}

/// A hand-made release archive: a manifest listing `listed`, then `entries` as given.
#[derive(Default)]
#[must_use]
pub(crate) struct Craft {
    entries: Vec<Raw>,
    listed: Vec<ManifestEntry>,
    version: Option<String>,
}

impl Craft {
    /// A file, a directory with a file and a symlink, all listed: a valid release.
    pub(crate) fn valid() -> Craft {
        Craft::default()
            .entry(Raw::file("a.txt", b"hello"), listed_file("a.txt", b"hello"))
            .entry(Raw::dir("d"), listed_dir("d"))
            .entry(Raw::file("d/b.txt", b"world"), listed_file("d/b.txt", b"world"))
            .entry(Raw::link("d/link", EntryType::Symlink, "../a.txt"), listed_symlink("d/link", "../a.txt"))
    }

    pub(crate) fn entry(mut self, raw: Raw, listed: ManifestEntry) -> Craft {
        self.entries.push(raw);
        self.listed.push(listed);
        self
    }

    pub(crate) fn version(mut self, version: &str) -> Craft {
        self.version = Some(version.into());
        self
    }

    /// In the archive only.
    pub(crate) fn raw(mut self, raw: Raw) -> Craft {
        self.entries.push(raw);
        self
    }

    /// In the manifest only.
    pub(crate) fn list(mut self, listed: ManifestEntry) -> Craft {
        self.listed.push(listed);
        self
    }

    pub(crate) fn tar_bytes(&self) -> Vec<u8> {
        let version = self.version.clone().unwrap_or_else(|| "v1".into());
        let manifest = Manifest { app: "hello".into(), version, git_commit: None, files: self.listed.clone() };
        let json = serde_json::to_vec(&manifest).unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&Raw::file(MANIFEST_NAME, &json).header(), json.as_slice()).unwrap();
        for raw in &self.entries {
            builder.append(&raw.header(), raw.data.as_slice()).unwrap();
        }
        builder.into_inner().unwrap()
    }

    pub(crate) fn write(&self, path: &Path) {
        fs::write(path, gzip(&self.tar_bytes())).unwrap();
    }
}

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = GzBuilder::new().write(Vec::new(), Compression::default());
    std::io::Write::write_all(&mut gz, data).unwrap();
    gz.finish().unwrap()
}

/// `len` bytes that look random to a compressor, the same for the same `seed`.
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        bytes.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// `len` bytes of varied but compressible text, the same for the same `seed`.
pub(crate) fn text(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len + 64);
    let mut line = seed;
    while bytes.len() < len {
        line += 1;
        let words = ["deploy", "release", "region", "health", "check", "host", "ferry", "tarball"];
        let word = words[usize::try_from(line * 7 % 8).unwrap()];
        bytes.extend_from_slice(
            format!("{line:>8}: {word} {} ok={}\n", line * 31 % 1009, line.is_multiple_of(3)).as_bytes(),
        );
    }
    bytes.truncate(len);
    bytes
}
