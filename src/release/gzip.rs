//! Parallel gzip for release archives, in the way of pigz: the byte stream is cut into
//! fixed-size chunks by offset, worker threads deflate each chunk as an independent piece
//! of one deflate stream (empty history at its start, byte-aligned by a sync flush at its
//! end), and the pieces are written in order behind one gzip header, with their crc32s
//! combined into one trailer. The result is a single ordinary gzip member that any gzip
//! reader takes whole. Stretches whose bytes look random (compressed assets, for instance)
//! are stored rather than searched for matches that deflate would not find.
//!
//! The output bytes depend only on the input, the chunk and block sizes and the level:
//! never on the number of workers or their timing. It holds a bounded number of chunks in
//! memory, whatever the size of the stream; it must not buffer the whole stream.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Mutex;
use std::thread;

use flate2::{Compress, Compression, Crc, FlushCompress};

/// Bytes of input per chunk, the unit of work of a worker. Large enough that cutting the
/// deflate history at each boundary costs next to nothing in size.
const CHUNK_SIZE: usize = 1 << 20;

/// Bytes of input judged compressible or not at a time, so a chunk that mixes random and
/// compressible files still stores only the random parts.
const BLOCK_SIZE: usize = 64 << 10;

/// The deflate level: `gzip`'s default. With random-looking blocks stored, the time goes
/// into the compressible part, where zlib-rs at level 6 is within 4% of `gzip -6` in size
/// and about three times as fast on one core; level 1 (zlib-ng's quick mode) makes that
/// part a third larger and level 2 8% larger, for little time saved in the whole.
const LEVEL: u32 = 6;

/// Chunks in flight per worker: one being compressed and one waiting, so no worker idles
/// while the writer catches up.
const CHUNKS_PER_WORKER: usize = 2;

/// gzip header: deflate, no flags (no name, comment or extra field), mtime 0, no extra
/// flags, OS unknown; the same for every archive on every host.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// An empty final block with fixed Huffman codes: what ends the deflate stream after the
/// last piece, which ends byte-aligned but not final.
const FINAL_BLOCK: [u8; 2] = [0x03, 0x00];

/// Runs `produce` with a writer whose bytes come out of `out` gzip-compressed by
/// `workers` threads. `produce` must call [`ParallelGz::finish`] to complete the stream;
/// the writer cannot outlive the call, since the workers are joined when it returns.
pub(crate) fn with_parallel_gzip<W: Write, R>(
    out: W,
    workers: NonZeroUsize,
    produce: impl for<'s> FnOnce(ParallelGz<'s, W>) -> R,
) -> R {
    let (jobs, queue) = mpsc::sync_channel(workers.get() * CHUNKS_PER_WORKER);
    let queue = Mutex::new(queue);
    thread::scope(|scope| {
        for _ in 0..workers.get() {
            scope.spawn(|| work(&queue));
        }
        produce(ParallelGz {
            out,
            jobs,
            in_flight: VecDeque::new(),
            max_in_flight: workers.get() * CHUNKS_PER_WORKER,
            chunk: Vec::with_capacity(CHUNK_SIZE),
            spare: Vec::new(),
            crc: Crc::new(),
            total: 0,
            started: false,
            scope: PhantomData,
        })
        // Returning drops the writer and with it the job queue's sender, which stops the
        // workers, so the scope's join never waits forever.
    })
}

/// A chunk to deflate, with a buffer for the result.
struct Job {
    input: Vec<u8>,
    output: Vec<u8>,
    done: SyncSender<io::Result<Piece>>,
}

/// A deflated chunk, with both buffers handed back for reuse.
struct Piece {
    input: Vec<u8>,
    output: Vec<u8>,
    crc: Crc,
}

/// The writing end: collects chunks, hands them to the workers and writes the finished
/// pieces in order. `'s` ties it to the call of [`with_parallel_gzip`] that made it.
pub(crate) struct ParallelGz<'s, W> {
    out: W,
    jobs: SyncSender<Job>,
    /// Results of the chunks sent, oldest first.
    in_flight: VecDeque<Receiver<io::Result<Piece>>>,
    max_in_flight: usize,
    chunk: Vec<u8>,
    /// Buffers of written pieces, for the next chunks.
    spare: Vec<(Vec<u8>, Vec<u8>)>,
    crc: Crc,
    total: u64,
    started: bool,
    scope: PhantomData<&'s mut &'s ()>,
}

impl<W: Write> ParallelGz<'_, W> {
    /// Compresses what is left, writes the end of the gzip stream and returns `out`.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        if !self.chunk.is_empty() {
            self.send_chunk()?;
        }
        while !self.in_flight.is_empty() {
            self.write_oldest()?;
        }
        self.start()?;
        self.out.write_all(&FINAL_BLOCK)?;
        self.out.write_all(&self.crc.sum().to_le_bytes())?;
        // ISIZE is the input length modulo 2^32 (RFC 1952), so the truncation is the format.
        #[allow(clippy::cast_possible_truncation)]
        self.out.write_all(&(self.total as u32).to_le_bytes())?;
        Ok(self.out)
    }

    fn start(&mut self) -> io::Result<()> {
        if !self.started {
            self.out.write_all(&HEADER)?;
            self.started = true;
        }
        Ok(())
    }

    fn send_chunk(&mut self) -> io::Result<()> {
        if self.in_flight.len() >= self.max_in_flight {
            self.write_oldest()?;
        }
        let (mut input, output) = self.spare.pop().unwrap_or_else(|| (Vec::with_capacity(CHUNK_SIZE), Vec::new()));
        input.clear();
        std::mem::swap(&mut input, &mut self.chunk);
        let (done, result) = mpsc::sync_channel(1);
        self.jobs.send(Job { input, output, done }).map_err(|_| workers_gone())?;
        self.in_flight.push_back(result);
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(result) = self.in_flight.pop_front() else { return Ok(()) };
        let piece = result.recv().map_err(|_| workers_gone())??;
        self.start()?;
        self.out.write_all(&piece.output)?;
        self.crc.combine(&piece.crc);
        self.total += piece.input.len() as u64;
        self.spare.push((piece.input, piece.output));
        Ok(())
    }
}

impl<W: Write> Write for ParallelGz<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK_SIZE - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        if self.chunk.len() == CHUNK_SIZE {
            self.send_chunk()?;
        }
        Ok(n)
    }

    /// Passes on nothing of the current chunk: chunk boundaries depend on offsets only.
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn workers_gone() -> io::Error {
    io::Error::other("a compression worker stopped")
}

/// A worker: deflates chunks from the queue until the writer is gone.
fn work(queue: &Mutex<Receiver<Job>>) {
    let mut compressor = Compress::new(Compression::new(LEVEL), false);
    loop {
        // The guard is a temporary, so the lock is held only while waiting for a job.
        let Ok(Ok(Job { input, mut output, done })) = queue.lock().map(|queue| queue.recv()) else { return };
        output.clear();
        let result = deflate_chunk(&mut compressor, &input, &mut output).map(|()| {
            let mut crc = Crc::new();
            crc.update(&input);
            Piece { input, output, crc }
        });
        // Only a writer that failed or gave up stops listening; nothing is lost then.
        let _ = done.send(result);
    }
}

/// Deflates `chunk` into `out` as non-final blocks ending byte-aligned, runs of
/// random-looking blocks stored and the rest compressed, each run with a fresh history.
fn deflate_chunk(compressor: &mut Compress, chunk: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let mut blocks = chunk.chunks(BLOCK_SIZE).map(|block| (looks_incompressible(block), block.len())).peekable();
    let mut start = 0;
    while let Some((stored, len)) = blocks.next() {
        let mut end = start + len;
        while let Some((_, len)) = blocks.next_if(|&(next, _)| next == stored) {
            end += len;
        }
        if stored {
            write_stored(&chunk[start..end], out);
        } else {
            compress_run(compressor, &chunk[start..end], out)?;
        }
        start = end;
    }
    Ok(())
}

/// Whether deflate would gain next to nothing on `block`: its bytes are spread almost
/// evenly over all 256 values (collision entropy above about 7.94 bits a byte), as in
/// compressed or encrypted data. Integer arithmetic only, so the choice, and with it the
/// archive's bytes, is the same on every machine.
fn looks_incompressible(block: &[u8]) -> bool {
    let mut counts = [[0u32; 256]; 4];
    let mut quads = block.chunks_exact(4);
    for quad in &mut quads {
        for (table, &byte) in counts.iter_mut().zip(quad) {
            table[usize::from(byte)] += 1;
        }
    }
    for &byte in quads.remainder() {
        counts[0][usize::from(byte)] += 1;
    }
    let sum_of_squares: u64 = (0..256)
        .map(|value| u64::from(counts.iter().map(|table| table[value]).sum::<u32>()))
        .map(|count| count * count)
        .sum();
    let len = block.len() as u64;
    // Uniformly random bytes give len² / sum_of_squares ≈ 255 (for 64 KiB blocks, within
    // ±2), text and code give well under 100.
    sum_of_squares * 245 < len * len
}

/// Appends `data` as stored (uncompressed) non-final blocks; the stream is byte-aligned
/// before and after.
fn write_stored(data: &[u8], out: &mut Vec<u8>) {
    for block in data.chunks(usize::from(u16::MAX)) {
        // Invariant: `chunks` yields at most `u16::MAX` bytes.
        let len = u16::try_from(block.len()).unwrap_or(u16::MAX);
        out.push(0); // BFINAL 0, BTYPE 00 (stored), padded to the byte
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
}

/// Appends `data` deflated from an empty history, ending with a sync flush so the next
/// run starts byte-aligned.
fn compress_run(compressor: &mut Compress, mut data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    compressor.reset();
    loop {
        out.reserve(data.len() + 1024);
        let before = compressor.total_in();
        compressor.compress_vec(data, out, FlushCompress::Sync).map_err(io::Error::other)?;
        let consumed = usize::try_from(compressor.total_in() - before).map_err(io::Error::other)?;
        data = &data[consumed..];
        // zlib's rule: a flush is complete once it returns with output space to spare.
        if data.is_empty() && out.len() < out.capacity() {
            return Ok(());
        }
    }
}

#[cfg(test)]
#[path = "gzip_tests.rs"]
mod tests;
