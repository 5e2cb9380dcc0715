//! `hello`: the example app bundled with ferry.
//!
//! A tiny HTTP server with no dependencies beyond std, used to demo and
//! benchmark deployments. It listens on `127.0.0.1:$PORT` (or `$HELLO_BIND:$PORT`)
//! and answers:
//!
//! * `GET /health`  -> `200 ok` (or `503` in mode `fail-health`)
//! * `GET /version` -> `$RELEASE_VERSION` (or `unknown`)
//! * `GET /`        -> app, version, region and instance id
//! * `GET /slow?ms=N` -> `$RELEASE_VERSION`, after N milliseconds (a long request)
//!
//! The mode is read from the file `mode` in the working directory, else from
//! `$HELLO_MODE`, else `ok`. Modes: `ok`, `fail-health`, `fail-requests` (`/health`
//! answers 200, every other path 500), `exit-at-start`,
//! `slow-start=MS`, `crash-after=MS` (exits with 1 that long after it starts
//! listening). With `$HELLO_LOG_REQUESTS` set, every request is logged with its
//! `User-Agent`; otherwise only changes of health. If `$HELLO_FIRST_OK_FILE` is set, the time of the first
//! healthy `/health` answer (Unix epoch nanoseconds) is written there once; if
//! `$HELLO_READY_FILE` is set, the time it started listening is written there.
//!
//! On Unix, SIGTERM and SIGINT make it print "hello: shutting down" and exit 0.

use std::env;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::exit;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The status of the last /health answer, so only changes are logged.
static LAST_HEALTH: AtomicU16 = AtomicU16::new(0);

const MAX_HEAD: usize = 16 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Ok,
    FailHealth,
    /// Passes its checks, answers everything else 500 (a release a canary catches).
    FailRequests,
    ExitAtStart,
    SlowStart(u64),
    CrashAfter(u64),
}

/// Everything a connection handler needs, shared between threads.
struct App {
    mode: Mode,
    version: String,
    region: String,
    instance: String,
    first_ok_file: Option<String>,
    first_ok_done: AtomicBool,
}

fn main() {
    let port: u16 = match env::var("PORT").ok().and_then(|p| p.trim().parse().ok()) {
        Some(p) => p,
        None => die(2, "PORT must be set to a valid port number"),
    };
    let mode_text = fs::read_to_string("mode")
        .map(|s| s.trim().to_string())
        .or_else(|_| env::var("HELLO_MODE"))
        .unwrap_or_default();
    let mode =
        parse_mode(&mode_text).unwrap_or_else(|| die(2, &format!("unknown mode {mode_text:?}")));

    match mode {
        Mode::ExitAtStart => die(3, "exiting at start as asked (mode exit-at-start)"),
        Mode::SlowStart(ms) => thread::sleep(Duration::from_millis(ms)),
        Mode::Ok | Mode::FailHealth | Mode::FailRequests | Mode::CrashAfter(_) => {}
    }

    let var = |name: &str, default: &str| env::var(name).unwrap_or_else(|_| default.to_string());
    let app = Arc::new(App {
        mode,
        version: var("RELEASE_VERSION", "unknown"),
        region: var("FLY_REGION", "unknown"),
        instance: var("FERRY_INSTANCE_ID", "unknown"),
        first_ok_file: env::var("HELLO_FIRST_OK_FILE")
            .ok()
            .filter(|s| !s.is_empty()),
        first_ok_done: AtomicBool::new(false),
    });

    #[cfg(unix)]
    shutdown::install();
    let addr = format!("{}:{port}", var("HELLO_BIND", "127.0.0.1"));
    let listener = TcpListener::bind(&addr)
        .unwrap_or_else(|e| die(1, &format!("cannot listen on {addr}: {e}")));
    if let Some(path) = env::var("HELLO_READY_FILE").ok().filter(|s| !s.is_empty()) {
        write_time(&path);
    }
    log(&format!(
        "hello {} listening on {addr} (region {}, instance {})",
        app.version, app.region, app.instance
    ));
    if let Mode::CrashAfter(ms) = mode {
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(ms));
            die(1, &format!("crashing {ms} ms after start, as asked (mode crash-after)"));
        });
    }

    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let app = Arc::clone(&app);
                thread::spawn(move || handle(&app, stream));
            }
            Err(e) => eprintln!("hello: accept failed: {e}"),
        }
    }
}

/// Parses a mode name; the empty string means `ok`.
fn parse_mode(text: &str) -> Option<Mode> {
    match text {
        "" | "ok" => Some(Mode::Ok),
        "fail-health" => Some(Mode::FailHealth),
        "fail-requests" => Some(Mode::FailRequests),
        "exit-at-start" => Some(Mode::ExitAtStart),
        _ => {
            if let Some(ms) = text.strip_prefix("crash-after=") {
                return ms.trim().parse().ok().map(Mode::CrashAfter);
            }
            text.strip_prefix("slow-start=")?.trim().parse().ok().map(Mode::SlowStart)
        }
    }
}

/// Serves one request on `stream`, then closes it.
fn handle(app: &App, mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let Some(head) = read_head(&mut stream) else {
        let _ = respond(&mut stream, false, 400, "bad request\n");
        return;
    };
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let method = words.next().unwrap_or("").to_string();
    let target = words.next().unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/");
    let is_head = method == "HEAD";

    let (status, body) = if method != "GET" && !is_head {
        (405, "method not allowed\n".to_string())
    } else {
        match path {
            "/health" if app.mode == Mode::FailHealth => (503, "unhealthy\n".to_string()),
            "/health" => (200, "ok\n".to_string()),
            _ if app.mode == Mode::FailRequests => (500, "failing as asked (mode fail-requests)\n".to_string()),
            "/version" => (200, format!("{}\n", app.version)),
            // A long request: answers after `ms` milliseconds (at most a minute).
            "/slow" => {
                let ms = target.split_once("ms=").and_then(|(_, v)| v.parse::<u64>().ok()).unwrap_or(1000);
                thread::sleep(Duration::from_millis(ms.min(60_000)));
                (200, format!("{}\n", app.version))
            }
            "/" => (
                200,
                format!(
                    "app: hello\nversion: {}\nregion: {}\ninstance: {}\n",
                    app.version, app.region, app.instance
                ),
            ),
            _ => (404, "not found\n".to_string()),
        }
    };

    let sent = respond(&mut stream, is_head, status, &body).is_ok();
    if sent && path == "/health" && status == 200 {
        record_first_ok(app);
    }
    if env::var_os("HELLO_LOG_REQUESTS").is_some() {
        let agent = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("user-agent")))
            .map_or("-", |(_, v)| v.trim());
        log(&format!("{method} {path} {status} {agent}"));
    } else if path != "/health" || LAST_HEALTH.swap(status, Ordering::SeqCst) != status {
        // Log only a change of health status, so the log's last lines stay about the
        // app.
        log(&format!("{method} {path} {status}"));
    }
}

/// Reads the request head up to and including "\r\n\r\n"; bodies are ignored.
/// Returns `None` on timeout, error, early close or a head over 16 KiB.
fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > MAX_HEAD {
            return None;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn respond(stream: &mut TcpStream, is_head: bool, status: u16, body: &str) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Unknown",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !is_head {
        out.push_str(body);
    }
    stream.write_all(out.as_bytes())?;
    stream.flush()
}

/// Writes the time of the first healthy answer to `$HELLO_FIRST_OK_FILE`, once,
/// atomically (write a temporary file, then rename it into place).
fn record_first_ok(app: &App) {
    let Some(path) = &app.first_ok_file else {
        return;
    };
    if app.first_ok_done.swap(true, Ordering::SeqCst) {
        return;
    }
    write_time(path);
}

/// Writes the current time (Unix epoch nanoseconds) to `path` atomically: a
/// temporary file, then renamed into place.
fn write_time(path: &str) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tmp = format!("{path}.tmp.{}", std::process::id());
    let result = fs::write(&tmp, nanos.to_string()).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = result {
        eprintln!("hello: cannot write {path}: {e}");
        let _ = fs::remove_file(&tmp);
    }
}

/// Prints one line to stdout and flushes it; output errors are ignored.
fn log(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Clean exit on SIGTERM/SIGINT without any crate: a tiny FFI binding to libc's
/// `signal`; the handler only calls async-signal-safe `write` and `_exit`.
#[cfg(unix)]
mod shutdown {
    extern "C" {
        fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
        fn write(fd: i32, buf: *const u8, count: usize) -> isize;
        fn _exit(status: i32) -> !;
    }

    const SIGINT: i32 = 2;
    const SIGTERM: i32 = 15;
    const MESSAGE: &[u8] = b"hello: shutting down\n";

    extern "C" fn on_signal(_signum: i32) {
        // SAFETY: write(2) and _exit(2) are async-signal-safe.
        unsafe {
            write(2, MESSAGE.as_ptr(), MESSAGE.len());
            _exit(0)
        }
    }

    pub fn install() {
        // SAFETY: installs a handler that only uses async-signal-safe calls.
        unsafe {
            signal(SIGINT, on_signal);
            signal(SIGTERM, on_signal);
        }
    }
}

fn die(code: i32, msg: &str) -> ! {
    eprintln!("hello: {msg}");
    exit(code)
}
