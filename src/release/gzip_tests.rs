use std::io::Read;
use std::process::Command;

use super::*;
use crate::release::testutil::{noise, text};

fn workers(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

/// Compresses `data`, written in pieces of `write_size` bytes.
fn gzip(data: &[u8], workers: NonZeroUsize, write_size: usize) -> Vec<u8> {
    with_parallel_gzip(Vec::new(), workers, |mut gz| {
        for piece in data.chunks(write_size) {
            gz.write_all(piece).unwrap();
        }
        gz.finish().unwrap()
    })
}

fn gunzip(gz: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    flate2::read::GzDecoder::new(gz).read_to_end(&mut data).unwrap();
    data
}

/// Random and compressible stretches, with boundaries inside chunks and blocks.
fn mixed(len: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(len);
    let mut seed = 0u64;
    while data.len() < len {
        seed += 1;
        let size = 40_000 + usize::try_from(seed * 151_013 % 700_000).unwrap();
        data.extend(if seed.is_multiple_of(2) { noise(size, seed) } else { text(size, seed) });
    }
    data.truncate(len);
    data
}

#[test]
fn the_output_is_one_gzip_member_of_the_input_whatever_the_workers_and_write_sizes() {
    let data = mixed(5 * CHUNK_SIZE + 12_345);
    let one = gzip(&data, workers(1), 8192);
    assert_eq!(gunzip(&one), data, "a single-member decoder reads it all");
    assert_eq!(gzip(&data, workers(4), 1_000_003), one);
    assert_eq!(gzip(&data, workers(3), CHUNK_SIZE), one);
    assert_eq!(one[..10], HEADER);
}

#[test]
fn system_gzip_accepts_the_output() {
    let data = mixed(3 * CHUNK_SIZE + 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.gz");
    std::fs::write(&path, gzip(&data, workers(2), 65_536)).unwrap();
    let test = Command::new("gzip").arg("-t").arg(&path).output().unwrap();
    assert!(test.status.success(), "gzip -t: {}", String::from_utf8_lossy(&test.stderr));
    let decoded = Command::new("gzip").arg("-dc").arg(&path).output().unwrap();
    assert!(decoded.status.success());
    assert!(decoded.stdout == data, "gzip -dc gave other bytes");
}

#[test]
fn random_blocks_are_stored_and_text_is_compressed() {
    assert!(looks_incompressible(&noise(BLOCK_SIZE, 1)));
    assert!(!looks_incompressible(&text(BLOCK_SIZE, 1)));
    assert!(!looks_incompressible(&vec![0; BLOCK_SIZE]));
    // Random bytes from half the values: deflate's Huffman codes save an eighth.
    let half: Vec<u8> = noise(BLOCK_SIZE, 2).iter().map(|b| b & 0x7f).collect();
    assert!(!looks_incompressible(&half));

    let random = noise(2 * CHUNK_SIZE, 3);
    let stored = gzip(&random, workers(2), CHUNK_SIZE);
    // 5 bytes a stored block of at most 65,535 bytes, one short block a chunk.
    let overhead = 5 * (random.len() / 65_535 + 2) + HEADER.len() + FINAL_BLOCK.len() + 8;
    assert!(stored.len() <= random.len() + overhead, "{} bytes", stored.len());
    let compressible = text(2 * CHUNK_SIZE, 3);
    assert!(gzip(&compressible, workers(2), CHUNK_SIZE).len() < compressible.len() / 4);
}

#[test]
fn an_empty_stream_is_a_valid_empty_gzip() {
    let empty = gzip(&[], workers(2), 1);
    assert_eq!(gunzip(&empty), b"");
}

#[test]
fn dropping_the_writer_unfinished_stops_the_workers() {
    let data = mixed(3 * CHUNK_SIZE);
    let out = with_parallel_gzip(Vec::new(), workers(2), |mut gz| {
        gz.write_all(&data).unwrap();
        "given up"
    });
    assert_eq!(out, "given up");
}
