//! sha256 over streams: a reader/writer wrapper that hashes and counts the bytes passing
//! through, so archives and files are hashed while they are written or read, in constant
//! memory. It must not buffer whole files.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::ReleaseError;

/// Hashes and counts every byte read from or written to `inner`.
pub(crate) struct Hashing<T> {
    inner: T,
    hasher: Sha256,
    bytes: u64,
}

impl<T> Hashing<T> {
    pub(crate) fn new(inner: T) -> Self {
        Hashing { inner, hasher: Sha256::new(), bytes: 0 }
    }

    /// The inner stream, the lowercase hex sha256 and the byte count.
    pub(crate) fn finish(self) -> (T, String, u64) {
        (self.inner, format!("{:x}", self.hasher.finalize()), self.bytes)
    }

    fn record(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.record(&buf[..n]);
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.record(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Lowercase hex sha256 of a file, read in chunks.
///
/// # Errors
///
/// `Io` when the file cannot be opened or read.
pub fn sha256_file(path: &Path) -> Result<String, ReleaseError> {
    sha256_and_size(path).map(|(sha256, _)| sha256)
}

/// sha256 and size of a file, from the bytes actually read.
pub(crate) fn sha256_and_size(path: &Path) -> Result<(String, u64), ReleaseError> {
    let file = File::open(path).map_err(ReleaseError::io("open", path))?;
    let mut reader = Hashing::new(file);
    io::copy(&mut reader, &mut io::sink()).map_err(ReleaseError::io("read", path))?;
    let (_, sha256, size) = reader.finish();
    Ok((sha256, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_file_matches_known_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, "abc").unwrap();
        assert_eq!(sha256_file(&path).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(sha256_and_size(&path).unwrap().1, 3);
    }

    #[test]
    fn sha256_file_names_a_missing_file() {
        let err = sha256_file(Path::new("/nonexistent/ferry.tar.gz")).unwrap_err();
        assert_eq!(err.to_string(), "failed to open `/nonexistent/ferry.tar.gz`");
    }

    #[test]
    fn hashing_writer_counts_only_written_bytes() {
        let mut writer = Hashing::new(Vec::new());
        writer.write_all(b"abc").unwrap();
        let (inner, sha256, bytes) = writer.finish();
        assert_eq!(inner, b"abc");
        assert_eq!(bytes, 3);
        assert!(sha256.starts_with("ba7816bf"));
    }
}
