//! A bounded HTTP load for figure 9: clients sending `GET /version` to a front door
//! until stopped, half on keep-alive connections and half opening one connection per
//! request, each request's latency and outcome recorded. As every HTTP client does,
//! a request on a reused keep-alive connection that the server closed before
//! answering anything is sent again on a new connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a load saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Latencies of the answered requests, in microseconds.
    pub latencies_us: Vec<u64>,
    pub failed: u64,
    /// The first few failures, said.
    pub errors: Vec<String>,
}

impl Seen {
    pub fn p99_ms(&self) -> f64 {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return f64::NAN;
        }
        let index = (sorted.len() * 99).div_ceil(100).saturating_sub(1);
        sorted[index] as f64 / 1000.0
    }

    pub fn requests(&self) -> u64 {
        self.latencies_us.len() as u64 + self.failed
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Seen>>,
}

impl Load {
    /// `pairs` keep-alive clients and as many opening a connection per request.
    pub fn start(addr: SocketAddr, pairs: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..pairs * 2)
            .map(|i| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || client(addr, i % 2 == 0, &stop))
            })
            .collect();
        Load { stop, clients }
    }

    pub fn finish(self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Seen::default();
        for client in self.clients {
            let seen = client.join().unwrap_or_default();
            all.latencies_us.extend(seen.latencies_us);
            all.failed += seen.failed;
            all.errors.extend(seen.errors);
        }
        all.errors.truncate(5);
        all
    }
}

fn client(addr: SocketAddr, keep_alive: bool, stop: &AtomicBool) -> Seen {
    let mut seen = Seen::default();
    let mut conn = None;
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let reused = conn.is_some();
        let mut result = exchange(addr, keep_alive, &mut conn);
        if matches!(result, Err((false, _))) && reused {
            conn = None;
            result = exchange(addr, keep_alive, &mut conn);
        }
        match result {
            Ok(200) => seen.latencies_us.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)),
            Ok(status) => {
                seen.failed += 1;
                if seen.errors.len() < 5 {
                    seen.errors.push(format!("status {status}"));
                }
            }
            Err((_, e)) => {
                conn = None;
                seen.failed += 1;
                if seen.errors.len() < 5 {
                    seen.errors.push(e.to_string());
                }
            }
        }
        if !keep_alive {
            conn = None;
        }
    }
    seen
}

/// One request: its status, or the error and whether any of an answer came.
fn exchange(
    addr: SocketAddr,
    keep_alive: bool,
    conn: &mut Option<BufReader<TcpStream>>,
) -> Result<u16, (bool, std::io::Error)> {
    if conn.is_none() {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| (false, e))?;
        stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| (false, e))?;
        let _ = stream.set_nodelay(true);
        *conn = Some(BufReader::new(stream));
    }
    let reader = conn.as_mut().unwrap();
    let close = if keep_alive { "" } else { "Connection: close\r\n" };
    write!(reader.get_mut(), "GET /version HTTP/1.1\r\nHost: bench\r\n{close}\r\n").map_err(|e| (false, e))?;
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => return Err((false, std::io::ErrorKind::UnexpectedEof.into())),
        Ok(_) => {}
        Err(e) => return Err((false, e)),
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| (true, std::io::Error::other(format!("no status line: {line:?}"))))?;
    let (mut length, mut closing) = (0usize, false);
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).map_err(|e| (true, e))?;
        if header == "\r\n" || header.is_empty() {
            break;
        }
        let lower = header.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("connection:") && lower.contains("close") {
            closing = true;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).map_err(|e| (true, e))?;
    if closing {
        *conn = None;
    }
    Ok(status)
}
