//! Measuring one thing at a time: a ferry run (wall time, peak RSS, its JSON events
//! stamped as they arrive), any other command, the app's own start-to-healthy time,
//! and a parallel `scp`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::sshd::SshFleet;

/// One `ferry` invocation.
pub struct FerryRun {
    pub wall: Duration,
    /// Peak resident set size of the ferry process, in KiB (GNU time's `%M`).
    pub rss_kib: u64,
    /// Every `--json` event with the wall-clock time (ns since the epoch) it arrived.
    pub events: Vec<(u128, serde_json::Value)>,
}

impl FerryRun {
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a (u128, serde_json::Value)> + 'a {
        self.events.iter().filter(move |(_, e)| e["event"] == kind)
    }

    /// Bytes sent by every upload of the run.
    pub fn bytes_uploaded(&self) -> u64 {
        self.of_kind("upload").filter_map(|(_, e)| e["bytes_sent"].as_u64()).sum()
    }
}

pub fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// Runs `ferry ARGS --json` in `dir` under GNU time; panics with ferry's output when it
/// fails (a benchmark of a failing deploy measures nothing).
pub fn ferry(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> FerryRun {
    let rss_file = tempfile::NamedTempFile::new().expect("temp file");
    let started = Instant::now();
    let started_ns = now_ns();
    let mut child = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(rss_file.path())
        .arg(crate::ferry_bin())
        .args(args)
        .arg("--json")
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferry runs");
    let stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        text
    });
    let mut events = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.expect("ferry's stdout");
        let at = now_ns();
        if let Ok(event) = serde_json::from_str(&line) {
            events.push((at, event));
        }
    }
    let status = child.wait().expect("ferry exits");
    let wall = started.elapsed();
    let errors = errors.join().unwrap_or_default();
    assert!(status.success(), "ferry {} failed ({status}):\n{errors}", args.join(" "));
    let rss_kib = std::fs::read_to_string(rss_file.path())
        .ok()
        .and_then(|text| text.lines().last().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0);
    if std::env::var_os("FERRY_BENCH_TRACE").is_some() {
        trace(args, started_ns, &events);
    }
    FerryRun { wall, rss_kib, events }
}

/// With `FERRY_BENCH_TRACE` set: every event of a run, in ms from its start, to see
/// where a run's time goes.
fn trace(args: &[&str], started_ns: u128, events: &[(u128, serde_json::Value)]) {
    eprintln!("trace: ferry {}", args.join(" "));
    for (at, event) in events {
        let ms = at.saturating_sub(started_ns) as f64 / 1e6;
        let what =
            ["host", "region", "instance"].iter().filter_map(|k| event[*k].as_str()).collect::<Vec<_>>().join(" ");
        eprintln!("  {ms:8.1} ms  {} {what}", event["event"].as_str().unwrap_or("?"));
    }
}

/// Runs a command to completion and returns its wall time; panics when it fails.
pub fn timed(command: &mut Command) -> Duration {
    let started = Instant::now();
    let out = command.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let wall = started.elapsed();
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wall
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Whether `GET /health` on `127.0.0.1:port` answers 200.
pub fn healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /health HTTP/1.0\r\nHost: bench\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

/// The floor of one instance: start the app from the unpacked release `dir` directly
/// and poll `/health` every millisecond until it answers 200.
pub fn start_to_healthy(dir: &Path) -> Duration {
    let (elapsed, mut child) = start_app(dir);
    let _ = child.kill();
    let _ = child.wait();
    elapsed
}

/// The floor of one restart: the app running, stop it with SIGTERM (until it is
/// gone), start it again and wait until it answers 200.
pub fn restart_to_healthy(dir: &Path) -> Duration {
    let (_, old) = start_app(dir);
    let started = Instant::now();
    let _ = Command::new("kill").args(["-TERM", &old.id().to_string()]).status();
    let mut old = old;
    let _ = old.wait();
    let stopped = started.elapsed();
    let (elapsed, mut new) = start_app(dir);
    let _ = new.kill();
    let _ = new.wait();
    stopped + elapsed
}

fn start_app(dir: &Path) -> (Duration, std::process::Child) {
    let port = free_port();
    let started = Instant::now();
    let mut child = Command::new(dir.join("bin/start"))
        .current_dir(dir)
        .env("PORT", port.to_string())
        .env_remove("BENCH_FIRST_OK")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the app starts");
    loop {
        if healthy(port) {
            return (started.elapsed(), child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the app exited before answering: {status}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Copies `file` to every host at once with `scp` (strict host keys, the fleet's
/// client config) and returns the wall time until the last copy finished.
pub fn parallel_scp(fleet: &SshFleet, file: &Path) -> Duration {
    let started = Instant::now();
    let children: Vec<_> = fleet
        .hosts()
        .iter()
        .map(|host| {
            Command::new("scp")
                .arg("-q")
                .arg("-F")
                .arg(fleet.ssh_config())
                .arg("-P")
                .arg(host.port.to_string())
                .arg(file)
                .arg(format!("{}@{}:floor.tar.gz", host.user, host.addr))
                .stdin(Stdio::null())
                .spawn()
                .expect("scp runs")
        })
        .collect();
    for mut child in children {
        assert!(child.wait().expect("scp exits").success(), "scp failed");
    }
    started.elapsed()
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => f64::midpoint(sorted[n / 2 - 1], sorted[n / 2]),
    }
}

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
