//! Figure 8: the front door as a reverse proxy, against Debian's HAProxy and Caddy in
//! front of the same instance, and the instance reached directly. `wrk` drives each
//! at the same concurrency (2 threads, 64 connections, keep-alive) for throughput and
//! p50/p99, then at 4 connections (well under the maximum: `wrk` cannot hold a rate)
//! for the latency a proxy adds. The agent's RSS is then read with 1,000 connections
//! open through the front door, and the agent is killed a few times to time how soon
//! the front door answers again (figure 10).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::figures::{project, Report};
use crate::tree::Tree;
use crate::Opts;

/// What one `wrk` run measured.
#[derive(Debug, Clone, Default)]
pub struct Wrk {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Socket errors and non-2xx answers.
    pub errors: u64,
}

/// The proxies compared, in the order reported.
pub const NAMES: [&str; 4] = ["ferry", "haproxy", "caddy", "direct"];

pub fn proxy(opts: &Opts, work: &Path, tree: &Tree, report: &mut Report) {
    eprintln!("==> 8. the front door as a proxy: ferry, HAProxy, Caddy, direct");
    let dir = project(&work.join("proxy"), tree, "local", "", crate::figures::SAME_WORK, &[("syd", Vec::new(), 1)]);
    crate::measure::ferry(&dir, &["deploy", "--version", "p1"], &[]);
    let status = Command::new(crate::ferry_bin()).args(["status", "--json"]).current_dir(&dir).output().unwrap();
    // `--json` is one object per line: the status, then `finished`.
    let status: serde_json::Value = String::from_utf8_lossy(&status.stdout)
        .lines()
        .next()
        .and_then(|line| serde_json::from_str(line).ok())
        .expect("status --json");
    let door: SocketAddr = status["front_doors"][0]["address"].as_str().expect("a front door").parse().unwrap();
    let _ = FIRST_DOOR.set(door);
    let backend = u16::try_from(status["instances"][0]["port"].as_u64().expect("an instance port")).unwrap();
    let direct = SocketAddr::from(([127, 0, 0, 1], backend));
    let haproxy_at = SocketAddr::from(([127, 0, 0, 1], crate::measure::free_port()));
    let caddy_at = SocketAddr::from(([127, 0, 0, 1], crate::measure::free_port()));
    let haproxy = Stopped(haproxy(&dir, haproxy_at, backend));
    let caddy = Stopped(caddy(&dir, caddy_at, backend));
    let targets = [door, haproxy_at, caddy_at, direct];
    for (addr, name) in targets.iter().zip(NAMES) {
        wait_answering(*addr, name);
    }
    let secs = if opts.smoke { 1 } else { 10 };
    for run in 0..opts.runs {
        // Alternating which goes first, as every figure does.
        let mut order: Vec<usize> = (0..targets.len()).collect();
        order.rotate_left(run % targets.len());
        for i in order {
            let heavy = wrk(targets[i], 2, 64, secs);
            let light = wrk(targets[i], 1, 4, secs);
            report.log(&format!(
                "proxy run {}: {:<7} c64 {:>9.0} req/s p50 {:.3} ms p99 {:.3} ms errors {}; c4 p99 {:.3} ms",
                run + 1,
                NAMES[i],
                heavy.rps,
                heavy.p50_ms,
                heavy.p99_ms,
                heavy.errors + light.errors,
                light.p99_ms
            ));
            report.proxy[i].push((heavy, light));
        }
    }
    drop((haproxy, caddy));
    let (agent, keeper) = rss_with_connections(door, if opts.smoke { 100 } else { 1000 });
    report.log(&format!("agent RSS with open connections: {agent} KiB (keeper {keeper} KiB)"));
    report.proxy_rss_kib = Some((agent, keeper));
    for run in 1..=opts.runs.max(3) {
        let (gap, refused) = killed_agent_gap();
        report.log(&format!(
            "agent killed, run {run}: first answer after {:.1} ms, {refused} connection(s) refused",
            secs_ms(gap)
        ));
        report.kill_gaps.push((secs_ms(gap), refused));
    }
    crate::measure::ferry(&dir, &["destroy", "--yes"], &[]);
}

/// Figure 9: a bounded load through the front door of a 2 regions x 2 instances app
/// on the local target, during a rolling deploy, a bluegreen deploy, a rollback and a
/// deploy that fails its checks, against the same load with nothing happening.
pub fn rollouts(opts: &Opts, work: &Path, tree: &Tree, report: &mut Report) {
    eprintln!("==> 9. requests through the front door during rollouts");
    let dir = project(&work.join("rollouts"), tree, "local", "", "", &[("syd", Vec::new(), 2), ("lax", Vec::new(), 2)]);
    crate::measure::ferry(&dir, &["deploy", "--version", "r1"], &[]);
    let status = Command::new(crate::ferry_bin()).args(["status", "--json"]).current_dir(&dir).output().unwrap();
    // `--json` is one object per line: the status, then `finished`.
    let status: serde_json::Value = String::from_utf8_lossy(&status.stdout)
        .lines()
        .next()
        .and_then(|line| serde_json::from_str(line).ok())
        .expect("status --json");
    let door: SocketAddr = status["front_doors"]
        .as_array()
        .and_then(|doors| doors.iter().find(|d| d["region"] == "syd"))
        .and_then(|d| d["address"].as_str())
        .expect("syd's front door")
        .parse()
        .unwrap();
    let pairs = 2;
    let load = crate::load::Load::start(door, pairs);
    std::thread::sleep(Duration::from_secs(if opts.smoke { 1 } else { 5 }));
    let steady = load.finish();
    report.log(&format!(
        "steady: {} requests, {} failed, p99 {:.2} ms",
        steady.requests(),
        steady.failed,
        steady.p99_ms()
    ));
    report.steady = Some(steady);
    let mode = tree.dir.join("mode");
    let boot = std::fs::read(&mode).ok();
    let runs: [(&str, &[&str], bool); 4] = [
        ("rolling", &["deploy", "--version", "r2"], true),
        ("bluegreen", &["deploy", "--version", "r3", "--strategy", "bluegreen"], true),
        ("rollback", &["rollback"], true),
        ("failed deploy", &["deploy", "--version", "r4", "--wait-timeout", "3s"], false),
    ];
    for (name, args, succeeds) in runs {
        if !succeeds {
            std::fs::write(&mode, "fail-health\n").unwrap();
        }
        let load = crate::load::Load::start(door, pairs);
        let out = Command::new(crate::ferry_bin()).args(args).current_dir(&dir).output().expect("ferry runs");
        let seen = load.finish();
        if let Some(boot) = &boot {
            std::fs::write(&mode, boot).unwrap();
        }
        assert_eq!(
            out.status.success(),
            succeeds,
            "ferry {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        report.log(&format!(
            "{name}: {} requests, {} failed, p99 {:.2} ms{}",
            seen.requests(),
            seen.failed,
            seen.p99_ms(),
            if seen.errors.is_empty() { String::new() } else { format!(" ({})", seen.errors.join("; ")) }
        ));
        report.rollouts.push((name.to_string(), seen));
    }
    crate::measure::ferry(&dir, &["destroy", "--yes"], &[]);
}

/// A process the benchmark started, killed when dropped (a panic included).
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HAProxy as a competent user configures it for one local backend: HTTP mode,
/// keep-alive to the backend with connection reuse, a thread per core, no logging.
fn haproxy(dir: &Path, at: SocketAddr, backend: u16) -> Child {
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let config = format!(
        "global\n  nbthread {threads}\n  maxconn 8000\n\ndefaults\n  mode http\n  timeout connect 5s\n  \
         timeout client 60s\n  timeout server 60s\n  option http-keep-alive\n  http-reuse always\n\n\
         frontend front\n  bind {at}\n  default_backend app\n\nbackend app\n  server app 127.0.0.1:{backend}\n"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy runs")
}

/// Caddy the same way: a plain HTTP site that reverse-proxies to the backend, no
/// admin endpoint, no automatic HTTPS, no access log (Caddy's default).
fn caddy(dir: &Path, at: SocketAddr, backend: u16) -> Child {
    let config = format!(
        "{{\n  admin off\n  auto_https off\n}}\n\nhttp://:{} {{\n  bind {}\n  reverse_proxy 127.0.0.1:{backend}\n}}\n",
        at.port(),
        at.ip()
    );
    let path = dir.join("Caddyfile");
    std::fs::write(&path, config).unwrap();
    Command::new("caddy")
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        .env("XDG_DATA_HOME", dir.join("caddy-data"))
        .env("XDG_CONFIG_HOME", dir.join("caddy-config"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("caddy runs")
}

/// Waits until `addr` answers a request with 200.
fn wait_answering(addr: SocketAddr, name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if get(addr).is_some_and(|status| status == 200) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{name} on {addr} never answered 200");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn get(addr: SocketAddr) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// `wrk -t threads -c connections -d secs --latency http://addr/`.
fn wrk(addr: SocketAddr, threads: usize, connections: usize, secs: u64) -> Wrk {
    let out = Command::new("wrk")
        .args(["-t", &threads.to_string(), "-c", &connections.to_string(), "-d", &format!("{secs}s"), "--latency"])
        .arg(format!("http://{addr}/"))
        .output()
        .expect("wrk runs");
    let text = String::from_utf8_lossy(&out.stdout);
    parse_wrk(&text).unwrap_or_else(|| panic!("wrk's output is not understood:\n{text}"))
}

fn parse_wrk(text: &str) -> Option<Wrk> {
    let mut wrk = Wrk::default();
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("50%") => wrk.p50_ms = ms(words.next()?)?,
            Some("99%") => wrk.p99_ms = ms(words.next()?)?,
            Some("Requests/sec:") => wrk.rps = words.next()?.parse().ok()?,
            Some("Non-2xx") => wrk.errors += line.rsplit(' ').next()?.parse::<u64>().ok()?,
            Some("Socket") => {
                // Socket errors: connect 0, read 0, write 0, timeout 0
                wrk.errors += line
                    .split(|c: char| !c.is_ascii_digit())
                    .filter(|n| !n.is_empty())
                    .filter_map(|n| n.parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    (wrk.rps > 0.0).then_some(wrk)
}

/// `1.23ms`, `456.00us`, `1.02s` in milliseconds.
fn ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => return None,
    })
}

/// The agent's and the keeper's RSS (KiB) once `n` keep-alive connections through the
/// front door have each been answered and stay open.
fn rss_with_connections(door: SocketAddr, n: usize) -> (u64, u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum });
    let mut open = Vec::new();
    for _ in 0..n {
        let stream = TcpStream::connect(door).expect("a connection to the front door");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reader = BufReader::new(stream);
        reader.get_mut().write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n").unwrap();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("an answer");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        open.push(reader);
    }
    let state = state_dir();
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("agent.json")).expect("agent.json")).unwrap();
    let agent = info["pid"].as_u64().unwrap_or(0);
    let keeper = keeper_pid(&state).unwrap_or(0);
    let result = (rss_kib(agent), rss_kib(keeper));
    drop(open);
    result
}

fn secs_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Kills the agent (SIGKILL) and times how long a client that keeps trying gets its
/// first answer through the front door; how many of its connections were refused
/// (none, while the keeper holds the socket).
fn killed_agent_gap() -> (Duration, u64) {
    let state = state_dir();
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("agent.json")).expect("agent.json")).unwrap();
    let agent = info["pid"].as_u64().expect("the agent's pid");
    let door = first_door();
    let status = Command::new("kill").args(["-9", &agent.to_string()]).status().expect("kill runs");
    assert!(status.success());
    let killed = std::time::Instant::now();
    // Gone (its sockets closed with it) before the first try.
    while std::fs::read_to_string(format!("/proc/{agent}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
    {
        assert!(killed.elapsed() < Duration::from_secs(10), "the agent (pid {agent}) outlived SIGKILL");
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut refused = 0;
    loop {
        match TcpStream::connect_timeout(&door, Duration::from_secs(10)) {
            Ok(mut stream) => {
                stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let _ = stream.write_all(b"GET /version HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
                let mut text = String::new();
                let _ = stream.read_to_string(&mut text);
                if text.starts_with("HTTP/1.1 200") {
                    return (killed.elapsed(), refused);
                }
            }
            Err(_) => refused += 1,
        }
        assert!(killed.elapsed() < Duration::from_mins(1), "no answer a minute after the agent was killed");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The front door the last `proxy` measurement used.
fn first_door() -> SocketAddr {
    *FIRST_DOOR.get().expect("the proxy figure ran first")
}

static FIRST_DOOR: std::sync::OnceLock<SocketAddr> = std::sync::OnceLock::new();

/// The state directory of this account's agent.
fn state_dir() -> std::path::PathBuf {
    ferry::agent::Paths::for_this_account().state
}

/// The keeper of `state`: the process running `agent keep --state STATE`.
fn keeper_pid(state: &Path) -> Option<u64> {
    let wanted = state.display().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u64 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let keep = args.windows(2).any(|w| w[0] == "agent" && w[1] == "keep");
        (keep && args.contains(&wanted)).then_some(pid)
    })
}

fn rss_kib(pid: u64) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}
