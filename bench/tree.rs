//! The benchmark's release tree: the bundled `hello` app, a start script, some
//! compressible application files and `--release-mib` MiB of incompressible ones (like
//! an Elixir release with ERTS). Generated from a fixed seed, so every run packs the
//! same bytes.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{repo, Opts};

pub struct Tree {
    pub dir: PathBuf,
    pub files: usize,
    pub bytes: u64,
}

/// The start script: boots the app from the release directory. With `BENCH_FIRST_OK`
/// set, the app records when it started listening and when it first answered 200
/// (for the health latency figure).
const START: &str = r#"#!/bin/sh
here=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${BENCH_FIRST_OK:-}" ]; then
  dir="${BENCH_FIRST_OK_DIR:-$HOME/first-ok}"
  mkdir -p "$dir"
  export HELLO_FIRST_OK_FILE="$dir/${FERRY_INSTANCE_ID:-x}-${RELEASE_VERSION:-x}"
  export HELLO_READY_FILE="$dir/ready-${FERRY_INSTANCE_ID:-x}-${RELEASE_VERSION:-x}"
fi
exec "$here/bin/hello"
"#;

pub fn make(work: &Path, opts: &Opts) -> Tree {
    let hello = build_hello();
    let dir = work.join("tree");
    let mut tree = Tree { dir: dir.clone(), files: 0, bytes: 0 };
    let mut put = |rel: &str, data: &[u8], exec: bool| {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, data).unwrap();
        if exec {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        tree.files += 1;
        tree.bytes += data.len() as u64;
    };
    put("bin/hello", &fs::read(&hello).unwrap(), true);
    put("bin/start", START.as_bytes(), true);
    if opts.boot_ms > 0 {
        put("mode", format!("slow-start={}\n", opts.boot_ms).as_bytes(), false);
    }

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Compressible application code: about 2 MiB of text over 60 modules (smoke: 6).
    let modules = if opts.smoke { 6 } else { 60 };
    for i in 0..modules {
        let len = 16 * 1024 + (rng.next() % (40 * 1024)) as usize;
        put(&format!("lib/hello-1.0/ebin/hello_mod_{i:02}.beam"), &text(&mut rng, len), false);
    }
    // Incompressible runtime: a few large files and many small ones.
    let total = opts.erts_mib << 20;
    let mut written = 0;
    let mut n = 0;
    while written < total {
        let size = match n % 8 {
            0 => 4 << 20,
            1 | 2 => 1 << 20,
            _ => 64 * 1024 + (rng.next() % (448 * 1024)) as usize,
        }
        .min(total - written);
        let mut data = vec![0u8; size];
        rng.fill(&mut data);
        put(&format!("lib/erts-14.2/lib/blob_{n:03}.so"), &data, n % 8 == 0);
        written += size;
        n += 1;
    }
    tree
}

/// Builds examples/hello (release profile) and returns its binary.
fn build_hello() -> PathBuf {
    let script = repo().join("examples/hello/build.sh");
    let status = Command::new("sh")
        .arg(&script)
        .env_remove("HELLO_MODE")
        .env_remove("RELEASE_VERSION")
        .current_dir(repo())
        .status()
        .expect("sh runs");
    assert!(status.success(), "{} failed", script.display());
    repo().join("examples/hello/_build/rel/bin/hello")
}

/// Source-like text: words from a small vocabulary, compressing about 4:1.
fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "defmodule",
        "def",
        "end",
        "do",
        "case",
        "conn",
        "socket",
        "Enum.map",
        "{:ok, state}",
        "|>",
        "fn",
        "->",
        "Repo.all",
        "%{}",
        "@impl true",
        "GenServer",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        let word = WORDS[(rng.next() % 16) as usize];
        out.write_all(word.as_bytes()).unwrap();
        out.push(if rng.next().is_multiple_of(7) { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

/// xorshift64*: fast, seeded, good enough to defeat deflate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn fill(&mut self, data: &mut [u8]) {
        for chunk in data.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}
