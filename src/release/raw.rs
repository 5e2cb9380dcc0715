//! The uncompressed tar stream of a release, for shipping when deflate saved next to
//! nothing (a release of already compressed files): the bytes on the wire are the
//! same, and the hosts are spared decompressing them.

use std::fs::File;
use std::io::{self, BufReader, BufWriter};
use std::path::{Path, PathBuf};

use super::manifest::{EntryKind, Manifest};
use super::ReleaseError;

/// Ship the plain tar stream when the archive is at least this share of it (percent):
/// at most a tenth more bytes on the wire, for no decompression on any host.
const RAW_WHEN_ARCHIVE_AT_LEAST: u64 = 90;

/// About how long the tar stream of `manifest` is: a 512-byte header per entry, the
/// contents padded to 512-byte blocks, the manifest, the end blocks. Long paths add a
/// header or two each, which only makes this an underestimate.
pub fn tar_size_estimate(manifest: &Manifest) -> u64 {
    let blocks = |size: u64| size.div_ceil(512) * 512;
    let entries: u64 =
        manifest.files.iter().map(|e| 512 + if e.kind == EntryKind::File { blocks(e.size) } else { 0 }).sum();
    let manifest_json = serde_json::to_vec_pretty(manifest).map_or(0, |json| json.len() as u64 + 1);
    entries + 512 + blocks(manifest_json) + 1024
}

/// Whether an archive of `archive_size` bytes gains too little over its tar stream to
/// be worth decompressing on every host.
pub fn worth_shipping_raw(archive_size: u64, manifest: &Manifest) -> bool {
    archive_size * 100 >= tar_size_estimate(manifest) * RAW_WHEN_ARCHIVE_AT_LEAST
}

/// A decompressed copy of an archive, removed when dropped.
#[derive(Debug)]
pub struct RawTar {
    pub path: PathBuf,
    pub size: u64,
}

impl Drop for RawTar {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Decompresses `archive` into `dest` (streamed; memory stays flat).
///
/// # Errors
///
/// `Io` naming the file that could not be read or written.
pub fn decompress(archive: &Path, dest: &Path) -> Result<RawTar, ReleaseError> {
    let input = File::open(archive).map_err(ReleaseError::io("open", archive))?;
    let mut reader = flate2::bufread::MultiGzDecoder::new(BufReader::new(input));
    let mut raw = RawTar { path: dest.to_owned(), size: 0 };
    let output = File::create(dest).map_err(ReleaseError::io("create", dest))?;
    let mut writer = BufWriter::with_capacity(256 * 1024, output);
    raw.size = io::copy(&mut reader, &mut writer).map_err(ReleaseError::io("decompress into", dest))?;
    writer.into_inner().map_err(|e| ReleaseError::io("write", dest)(e.into_error()))?;
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::testutil;

    #[test]
    fn the_estimate_is_close_to_the_real_tar_stream() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("rel");
        std::fs::create_dir_all(src.join("bin")).unwrap();
        std::fs::write(src.join("bin/app"), vec![7u8; 100_000]).unwrap();
        std::fs::write(src.join("a.txt"), "hello\n").unwrap();
        let built = crate::release::pack(&src, "app", "v1", None, &dir.path().join("app.tar.gz")).unwrap();
        let raw = decompress(&built.path, &dir.path().join("app.tar")).unwrap();
        let real = std::fs::metadata(&raw.path).unwrap().len();
        let estimate = tar_size_estimate(&built.manifest);
        assert!(estimate <= real && real - estimate < 10_240, "estimate {estimate}, real {real}");
        let path = raw.path.clone();
        drop(raw);
        assert!(!path.exists(), "dropping the copy removes it");
    }

    #[test]
    fn only_archives_that_saved_little_ship_raw() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("rel");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("text"), "compressible ".repeat(20_000)).unwrap();
        let text = crate::release::pack(&src, "app", "v1", None, &dir.path().join("t.tar.gz")).unwrap();
        assert!(!worth_shipping_raw(text.size, &text.manifest));
        std::fs::write(src.join("text"), testutil::noise(300_000, 1)).unwrap();
        let random = crate::release::pack(&src, "app", "v2", None, &dir.path().join("r.tar.gz")).unwrap();
        assert!(worth_shipping_raw(random.size, &random.manifest));
    }
}
