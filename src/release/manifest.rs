//! The manifest that travels as the first entry of every release archive: what the
//! release is (app, version, commit) and every entry it holds, with sizes, modes and
//! sha256s, so a host can verify an unpacked release entry by entry. It is data
//! only: it must not read files or archives.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Name of the manifest entry, first in every release archive and reserved at the root of
/// a release directory.
pub const MANIFEST_NAME: &str = "ferry-manifest.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub app: String,
    pub version: String,
    pub git_commit: Option<String>,
    /// Every entry of the release except the manifest itself, sorted by path.
    pub files: Vec<ManifestEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Relative, `/`-separated, without `./` or a trailing `/`.
    pub path: String,
    pub kind: EntryKind,
    /// Bytes of a file's contents; 0 for directories and symlinks.
    pub size: u64,
    /// Lowercase hex sha256 of a file's contents; files only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Permission bits as archived: 0o755 or 0o644, 0o777 for symlinks.
    pub mode: u32,
    /// Where a symlink points, relative to its directory; symlinks only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
        })
    }
}

impl Manifest {
    /// The bytes its files take once unpacked (contents only).
    #[must_use]
    pub fn unpacked_size(&self) -> u64 {
        self.files.iter().filter(|e| e.kind == EntryKind::File).map(|e| e.size).sum()
    }

    /// `"<sha256>  <path>\n"` for every regular file, the input `sha256sum -c` checks
    /// from the release directory. Paths never need escaping: packing refuses names with
    /// backslashes or control characters.
    #[must_use]
    pub fn sha256sum_lines(&self) -> String {
        self.files
            .iter()
            .filter(|entry| entry.kind == EntryKind::File)
            .filter_map(|entry| entry.sha256.as_ref().map(|sha256| format!("{sha256}  {}\n", entry.path)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind) -> ManifestEntry {
        let file = kind == EntryKind::File;
        ManifestEntry {
            path: path.to_owned(),
            kind,
            size: if file { 3 } else { 0 },
            sha256: file.then(|| "ab".repeat(32)),
            mode: 0o644,
            target: (kind == EntryKind::Symlink).then(|| "x".to_owned()),
        }
    }

    #[test]
    fn sha256sum_lines_lists_regular_files_only() {
        let manifest = Manifest {
            app: "hello".into(),
            version: "v1".into(),
            git_commit: None,
            files: vec![
                entry("bin", EntryKind::Dir),
                entry("bin/run", EntryKind::File),
                entry("link", EntryKind::Symlink),
            ],
        };
        assert_eq!(manifest.sha256sum_lines(), format!("{}  bin/run\n", "ab".repeat(32)));
    }

    #[test]
    fn manifest_json_uses_lowercase_kinds_and_omits_absent_fields() {
        let json = serde_json::to_string(&entry("bin", EntryKind::Dir)).unwrap();
        assert_eq!(json, r#"{"path":"bin","kind":"dir","size":0,"mode":420}"#);
        let link = entry("l", EntryKind::Symlink);
        let back: ManifestEntry = serde_json::from_str(&serde_json::to_string(&link).unwrap()).unwrap();
        assert_eq!(back, link);
    }
}
