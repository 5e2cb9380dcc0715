//! The front door: a reverse proxy in each host's agent on the app's public port,
//! routing only to instances that take traffic and pass their checks. Driven through
//! the real binary, with a bounded load of real HTTP requests (keep-alive and new
//! connections) running through deploys, a failed deploy and a rollback.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::Project;

/// What a load saw.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    failed: u64,
    /// The first few failures, said.
    errors: Vec<String>,
}

/// Clients sending `GET /version` to one address until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Tally>>,
}

impl Load {
    /// `clients` clients on keep-alive connections and as many opening one connection
    /// per request.
    fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for i in 0..clients * 2 {
            let stop = Arc::clone(&stop);
            let keep_alive = i % 2 == 0;
            handles.push(std::thread::spawn(move || run(addr, keep_alive, &stop)));
        }
        Load { stop, clients: handles }
    }

    fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = Tally::default();
        for client in self.clients {
            let tally = client.join().unwrap();
            total.ok += tally.ok;
            total.failed += tally.failed;
            total.errors.extend(tally.errors);
        }
        total.errors.truncate(10);
        total
    }
}

fn run(addr: SocketAddr, keep_alive: bool, stop: &AtomicBool) -> Tally {
    let mut tally = Tally::default();
    let mut conn: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::SeqCst) {
        match request(addr, keep_alive, &mut conn, "/version") {
            Ok((200, _)) => tally.ok += 1,
            Ok((status, body)) => {
                tally.failed += 1;
                if tally.errors.len() < 5 {
                    tally.errors.push(format!("{status} {}", body.trim()));
                }
            }
            Err(e) => {
                conn = None;
                tally.failed += 1;
                if tally.errors.len() < 5 {
                    tally.errors.push(e.to_string());
                }
            }
        }
        if !keep_alive {
            conn = None;
        }
    }
    tally
}

/// One HTTP/1.1 request: its status and body. As every HTTP client does, a request
/// on a reused keep-alive connection that the server closed before answering
/// anything is sent again on a new connection (RFC 9112, 9.3.1), and a response
/// saying `Connection: close` ends the connection.
fn request(
    addr: SocketAddr,
    keep_alive: bool,
    conn: &mut Option<BufReader<TcpStream>>,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let reused = conn.is_some();
    match exchange(addr, keep_alive, conn, path, "") {
        Err(Failure::Unanswered(_)) if reused => {
            *conn = None;
            exchange(addr, keep_alive, conn, path, "").map_err(Failure::into_inner)
        }
        result => result.map_err(Failure::into_inner),
    }
}

/// A request that failed before anything of an answer came, or after.
enum Failure {
    Unanswered(std::io::Error),
    Broken(std::io::Error),
}

impl Failure {
    fn into_inner(self) -> std::io::Error {
        match self {
            Failure::Unanswered(e) | Failure::Broken(e) => e,
        }
    }
}

use Failure::Unanswered;

fn exchange(
    addr: SocketAddr,
    keep_alive: bool,
    conn: &mut Option<BufReader<TcpStream>>,
    path: &str,
    headers: &str,
) -> Result<(u16, String), Failure> {
    if conn.is_none() {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(Unanswered)?;
        stream.set_read_timeout(Some(Duration::from_secs(70))).map_err(Unanswered)?;
        *conn = Some(BufReader::new(stream));
    }
    let reader = conn.as_mut().unwrap();
    let close = if keep_alive { "" } else { "Connection: close\r\n" };
    write!(reader.get_mut(), "GET {path} HTTP/1.1\r\nHost: hello.test\r\n{headers}{close}\r\n").map_err(Unanswered)?;
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => return Err(Unanswered(std::io::ErrorKind::UnexpectedEof.into())),
        Ok(_) => {}
        Err(e) => return Err(Unanswered(e)),
    }
    // From here on an answer began: a failure is the server's.
    let answered = Failure::Broken;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| answered(std::io::Error::other(format!("no status line: {line:?}"))))?;
    let mut length = 0usize;
    let mut closing = false;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).map_err(answered)?;
        if header == "\r\n" || header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
            if name.eq_ignore_ascii_case("connection") && value.trim().eq_ignore_ascii_case("close") {
                closing = true;
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).map_err(answered)?;
    if closing {
        *conn = None;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, false, &mut None, path).unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

fn door(project: &Project, region: &str) -> SocketAddr {
    let doors = project.front_doors();
    let (_, address) =
        doors.iter().find(|(r, _)| r == region).unwrap_or_else(|| panic!("no door in {region}: {doors:?}"));
    address.parse().unwrap()
}

#[test]
fn each_region_has_a_front_door_and_status_says_who_takes_traffic() {
    let project = Project::two_by_two();
    let run = project.deploy("v1");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let syd = door(&project, "syd");
    let lax = door(&project, "lax");
    assert_eq!(syd, SocketAddr::from(([127, 0, 0, 1], project.port)), "the primary region is on 127.0.0.1");
    assert!(lax.ip().is_loopback() && lax.ip() != syd.ip() && lax.port() == project.port, "{lax}");
    assert!(get(syd, "/").1.contains("region: syd"));
    assert!(get(lax, "/").1.contains("region: lax"));
    assert_eq!(get(syd, "/version"), (200, "v1\n".into()));
    for instance in project.instances() {
        assert_eq!(instance["traffic"], true, "{instance}");
    }
    let table = project.ferry(&["status"]);
    assert!(table.stdout.contains(&format!("front door syd  {syd}")), "{}", table.stdout);
    assert!(table.stdout.contains("TRAFFIC"), "{}", table.stdout);
}

#[test]
fn no_request_fails_through_a_rolling_deploy_a_failed_deploy_and_a_rollback() {
    let project = Project::two_by_two();
    assert_eq!(project.deploy("v1").code, 0);
    let (syd, lax) = (door(&project, "syd"), door(&project, "lax"));
    let loads = [Load::start(syd, 2), Load::start(lax, 2)];

    let run = project.deploy("v2");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(get(syd, "/version").1, "v2\n");

    project.set_mode(Some("fail-health"));
    let run = project.ferry(&["deploy", "--version", "v3", "--wait-timeout", "2s"]);
    assert_eq!(run.code, 1, "v3 fails its checks: {}", run.stderr);
    project.set_mode(None);
    assert_eq!(get(syd, "/version").1, "v2\n", "the failed release never took traffic");

    let run = project.ferry(&["rollback", "v1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(get(lax, "/version").1, "v1\n");

    for (load, region) in loads.into_iter().zip(["syd", "lax"]) {
        let tally = load.finish();
        assert!(tally.ok > 0, "{region}: the load ran");
        assert_eq!(tally.failed, 0, "{region}: {} of {} requests failed: {:?}", tally.failed, tally.ok, tally.errors);
    }
    assert_eq!(project.instances().len(), 4, "the old instances are gone: {:?}", project.instances());
}

#[test]
fn a_long_request_in_flight_when_its_instance_is_replaced_completes() {
    let project = Project::builder().region("syd", 1).build();
    assert_eq!(project.deploy("v1").code, 0);
    let syd = door(&project, "syd");
    let slow = std::thread::spawn(move || get(syd, "/slow?ms=3000"));
    let run = project.deploy("v2");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(slow.join().unwrap(), (200, "v1\n".into()), "the old instance finished its request");
    assert_eq!(get(syd, "/version").1, "v2\n");
    assert_eq!(project.instances().len(), 1);
}

#[test]
fn a_port_the_account_may_not_listen_on_fails_with_how_to_allow_it() {
    if !common::need::root() {
        return;
    }
    let fleet = common::sshd::SshFleet::start(1);
    let project = Project::builder()
        .ferry_keys("target = \"ssh\"")
        .env("FERRY_SSH_CONFIG", fleet.ssh_config().to_str().unwrap())
        .ssh_region("syd", &[fleet.hosts()[0].spec()], 1)
        .proxy("  bind = \"host\"")
        .build();
    let run = project.deploy("v1");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("ip_unprivileged_port_start=80"), "{}", run.stderr);
    assert!(run.stderr.contains("[ferry.proxy.ports] 80 = "), "{}", run.stderr);
    assert!(project.instances().is_empty(), "nothing was started");
}

#[test]
fn no_request_fails_through_rolling_bluegreen_failed_deploys_and_a_rollback_on_ssh_hosts() {
    if !common::need::root() {
        return;
    }
    let fleet = common::sshd::SshFleet::start(2);
    let project = common::ssh_project(&fleet, &[("syd", &[0, 1], 2)], "");
    assert_eq!(project.deploy("v1").code, 0);
    let doors: Vec<SocketAddr> = project.front_doors().iter().map(|(_, a)| a.parse().unwrap()).collect();
    assert_eq!(doors.len(), 2, "one door per host: {doors:?}");
    let loads: Vec<Load> = doors.iter().map(|d| Load::start(*d, 1)).collect();
    let run = project.deploy("v2");
    assert_eq!(run.code, 0, "{}", run.stderr);
    for door in &doors {
        assert_eq!(get(*door, "/version").1, "v2\n");
    }
    let run = project.ferry(&["deploy", "--version", "v3", "--strategy", "bluegreen"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for door in &doors {
        assert_eq!(get(*door, "/version").1, "v3\n");
    }
    project.set_mode(Some("fail-health"));
    for strategy in ["rolling", "bluegreen"] {
        let run = project.ferry(&["deploy", "--version", "v4", "--strategy", strategy, "--wait-timeout", "2s"]);
        assert_eq!(run.code, 1, "v4 fails its checks ({strategy}): {}", run.stderr);
    }
    project.set_mode(None);
    let run = project.ferry(&["rollback", "v2"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for door in &doors {
        assert_eq!(get(*door, "/version").1, "v2\n");
    }
    for load in loads {
        let tally = load.finish();
        assert!(tally.ok > 0);
        assert_eq!(tally.failed, 0, "{} of {} failed: {:?}", tally.failed, tally.ok, tally.errors);
    }
}

#[test]
fn a_rollout_killed_before_its_switch_is_finished_by_running_it_again() {
    let project = Project::builder().region("syd", 1).build();
    assert_eq!(project.deploy("v1").code, 0);
    let syd = door(&project, "syd");
    let load = Load::start(syd, 1);
    // v2 takes a while to listen: the deploy is killed while its instance starts
    // beside v1's.
    project.set_mode(Some("slow-start=2000"));
    let mut deploy = project.spawn(&["deploy", "--version", "v2", "--json"]);
    let mut out = BufReader::new(deploy.stdout.take().unwrap());
    common::wait_for_event(&mut out, |e| e["event"] == "instance_updating").expect("the rollout started");
    common::eventually(Duration::from_secs(10), || (project.instances().len() == 2).then_some(()));
    deploy.kill().unwrap();
    deploy.wait().unwrap();
    assert_eq!(get(syd, "/version").1, "v1\n", "the old one still takes every request");

    let run = project.deploy("v2");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let instances = project.instances();
    assert_eq!(instances.len(), 1, "the one left behind was stopped: {instances:?}");
    assert_eq!(instances[0]["version"], "v2");
    assert_eq!(get(syd, "/version").1, "v2\n");
    let tally = load.finish();
    assert_eq!(tally.failed, 0, "{} of {} failed: {:?}", tally.failed, tally.ok, tally.errors);
}

fn agent_pid(project: &Project) -> u64 {
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(project.state_dir().join("agent.json")).unwrap()).unwrap();
    info["pid"].as_u64().unwrap()
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

/// Runs `args` with another build of ferry (the same program with other bytes, which
/// the loader ignores): the agent it finds is handed over to it.
fn run_newer_build(project: &Project, args: &[&str]) -> std::process::Output {
    let newer = project.path().join("ferry-newer");
    if !newer.exists() {
        let mut bytes = std::fs::read(common::FERRY).unwrap();
        bytes.extend_from_slice(b"\0another build\0");
        std::fs::write(&newer, bytes).unwrap();
        std::process::Command::new("chmod").arg("+x").arg(&newer).status().unwrap();
    }
    let base = project.command(args);
    std::process::Command::new(&newer)
        .args(args)
        .current_dir(project.path())
        .envs(base.get_envs().filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))))
        .output()
        .unwrap()
}

#[test]
fn no_request_fails_while_a_newer_agent_takes_the_front_door_over() {
    let project = Project::builder().region("syd", 2).build();
    assert_eq!(project.deploy("v1").code, 0);
    let syd = door(&project, "syd");
    let load = Load::start(syd, 2);
    let first = agent_pid(&project);
    let run = run_newer_build(&project, &["status", "--json"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let second = agent_pid(&project);
    assert_ne!(second, first, "the newer build's agent took over");
    // The agent that took over serves a deploy.
    let run = project.deploy("v2");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(get(syd, "/version").1, "v2\n");
    let tally = load.finish();
    assert!(tally.ok > 0);
    assert_eq!(tally.failed, 0, "{} of {} failed: {:?}", tally.failed, tally.ok, tally.errors);
}

#[test]
fn a_killed_front_door_process_is_started_again_and_connections_made_meanwhile_wait() {
    let project = Project::builder().region("syd", 1).build();
    assert_eq!(project.deploy("v1").code, 0);
    let syd = door(&project, "syd");
    assert_eq!(get(syd, "/version").1, "v1\n");
    let killed = agent_pid(&project);
    std::process::Command::new("kill").args(["-9", &killed.to_string()]).status().unwrap();
    common::eventually(Duration::from_secs(5), || (!alive(killed)).then_some(()));
    // Its sockets closed with it; the listening one stays open in the keeper, so these
    // are queued, not refused, and answered once the keeper has started a new agent.
    let clients: Vec<_> =
        (0..8).map(|_| std::thread::spawn(move || request(syd, false, &mut None, "/version"))).collect();
    for client in clients {
        let answer = client.join().unwrap().expect("a connection made while no agent served was answered");
        assert_eq!(answer, (200, "v1\n".to_string()));
    }
    // The keeper started a new agent.
    common::eventually(Duration::from_secs(5), || {
        let pid = agent_pid(&project);
        (pid != killed && alive(pid)).then_some(pid)
    });
    assert_eq!(project.instances().len(), 1, "and it adopted the instance");
}

/// `GET path` with the preview header: what the new release being deployed answers.
fn preview_get(addr: SocketAddr, path: &str) -> (u16, String) {
    exchange(addr, false, &mut None, path, "Ferry-Preview: 1\r\n")
        .map_err(Failure::into_inner)
        .unwrap_or_else(|e| panic!("GET {path} on {addr} (preview): {e}"))
}

#[test]
fn a_bluegreen_deploy_previews_the_new_set_then_switches_each_region_at_once() {
    // Each new instance waits 5 s (min_healthy_time) before its region switches: the
    // window in which the preview is looked at.
    let project =
        Project::builder().region("syd", 2).region("lax", 2).ferry_keys("deploy.min_healthy_time = \"5s\"").build();
    assert_eq!(project.deploy("v1").code, 0);
    let (syd, lax) = (door(&project, "syd"), door(&project, "lax"));
    let loads = [Load::start(syd, 2), Load::start(lax, 2)];

    let mut deploy = project.spawn(&["deploy", "--version", "v2", "--strategy", "bluegreen", "--json"]);
    let mut out = BufReader::new(deploy.stdout.take().unwrap());
    common::wait_for_event(&mut out, |e| e["event"] == "instance_healthy" && e["region"] == "syd")
        .expect("a new syd instance passed its checks");
    let previewed = common::eventually(Duration::from_secs(3), || {
        let answer = preview_get(syd, "/version");
        (answer.1 == "v2\n").then_some(answer)
    });
    assert_eq!(previewed, (200, "v2\n".to_string()), "the preview header reaches the new set");
    assert_eq!(get(syd, "/version"), (200, "v1\n".to_string()), "everyone else still gets the old set");
    assert_eq!(project.instances().len(), 4 + 2, "syd's new instances start beside the old ones, all at once");
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(deploy.wait().unwrap().success(), "{rest}");
    assert_eq!(get(syd, "/version").1, "v2\n");
    assert_eq!(get(lax, "/version").1, "v2\n");
    assert_eq!(preview_get(lax, "/version").1, "v2\n", "with nothing to preview, the header is ignored");

    // A bluegreen deploy whose new set fails its checks leaves the old set serving.
    project.set_mode(Some("fail-health"));
    let run = project.ferry(&["deploy", "--version", "v3", "--strategy", "bluegreen", "--wait-timeout", "2s"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    project.set_mode(None);
    let instances = project.instances();
    assert_eq!(instances.len(), 4, "the new set is gone: {instances:?}");
    assert!(instances.iter().all(|i| i["version"] == "v2"), "{instances:?}");

    for (load, region) in loads.into_iter().zip(["syd", "lax"]) {
        let tally = load.finish();
        assert!(tally.ok > 0, "{region}: the load ran");
        assert_eq!(tally.failed, 0, "{region}: {} of {} requests failed: {:?}", tally.failed, tally.ok, tally.errors);
    }
}

#[test]
fn maintenance_answers_every_request_with_a_page_until_it_is_switched_off() {
    let project = Project::builder().region("syd", 1).build();
    assert_eq!(project.deploy("v1").code, 0);
    let syd = door(&project, "syd");
    let run = project.ferry(&["maintenance", "on", "--message", "Back at <5> o'clock"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let (status, page) = get(syd, "/version");
    assert_eq!(status, 503, "{page}");
    assert!(page.contains("Back at &lt;5&gt; o&#39;clock"), "the message, escaped: {page}");
    assert_eq!(preview_get(syd, "/version"), (200, "v1\n".to_string()), "the preview header still reaches the app");
    assert_eq!(project.status()["maintenance"], "Back at <5> o'clock");
    assert!(project.ferry(&["status"]).stdout.contains("MAINTENANCE"));

    // Kept by the next agent.
    let killed = agent_pid(&project);
    std::process::Command::new("kill").args(["-9", &killed.to_string()]).status().unwrap();
    common::eventually(Duration::from_secs(5), || (!alive(killed)).then_some(()));
    assert_eq!(get(syd, "/version").0, 503, "still in maintenance after the agent came back");

    // A deploy goes on behind it.
    assert_eq!(project.deploy("v2").code, 0);
    assert_eq!(get(syd, "/version").0, 503);
    let run = project.ferry(&["maintenance", "off"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(get(syd, "/version"), (200, "v2\n".to_string()));
    assert!(project.status()["maintenance"].is_null());
}

/// A self-signed certificate for `hello.test` in `dir`: (cert, key).
fn certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=hello.test", "-addext", "subjectAltName=DNS:hello.test"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs (.ci/run installs it)");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    (cert, key)
}

/// `curl` over HTTPS to `hello.test` at `addr`, trusting `cert`: the HTTP version,
/// the status and the body.
fn curl_https(addr: SocketAddr, cert: &std::path::Path, path: &str) -> (String, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_version} %{http_code}"])
        .arg("--cacert")
        .arg(cert)
        .arg("--resolve")
        .arg(format!("hello.test:{}:{}", addr.port(), addr.ip()))
        .arg(format!("https://hello.test:{}{path}", addr.port()))
        .output()
        .expect("curl runs (.ci/run installs it)");
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = text.rsplit_once('\n').unwrap();
    (last.to_string(), body.to_string())
}

#[test]
fn a_tls_door_serves_https_and_http2_with_the_configured_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(certs.path());
    let tls_port = common::free_port();
    let project = Project::builder()
        .region("syd", 1)
        .proxy(&format!(
            "  tls_cert = \"{}\"\n  tls_key = \"{}\"\n  [ferry.proxy.ports]\n    443 = {tls_port}\n",
            cert.display(),
            key.display()
        ))
        .build();
    let run = project.ferry(&["deploy", "--version", "v1", "--dry-run"]);
    let plan = format!("{}{}", run.stdout, run.stderr);
    assert!(plan.contains(&format!("127.0.0.1:{tls_port} (https)")), "{plan}");
    assert_eq!(project.deploy("v1").code, 0);
    let addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
    assert_eq!(curl_https(addr, &cert, "/version"), ("2 200".to_string(), "v1\n".to_string()), "HTTP/2 over TLS");
    let cleartext = SocketAddr::from(([127, 0, 0, 1], project.port));
    assert_eq!(get(cleartext, "/version").1, "v1\n", "the plain door still answers");
    // A rollout through the TLS door keeps answering.
    assert_eq!(project.deploy("v2").code, 0);
    assert_eq!(curl_https(addr, &cert, "/version").1, "v2\n");
}

#[test]
fn a_key_that_cannot_be_read_fails_the_deploy_before_anything_starts() {
    let tls_port = common::free_port();
    let project = Project::builder()
        .region("syd", 1)
        .proxy(&format!(
            "  tls_cert = \"/nonexistent/cert.pem\"\n  tls_key = \"/nonexistent/key.pem\"\n  [ferry.proxy.ports]\n    443 = {tls_port}\n"
        ))
        .build();
    let run = project.deploy("v1");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("/nonexistent/cert.pem"), "{}", run.stderr);
    assert!(project.instances().is_empty(), "nothing was started");
}

#[test]
fn force_https_redirects_to_the_tls_door_on_ssh_hosts() {
    if !common::need::root() {
        return;
    }
    // Readable by the hosts' users.
    let certs = tempfile::Builder::new().prefix("ferry-certs-").tempdir_in("/tmp").unwrap();
    let (cert, key) = certificate(certs.path());
    for path in [certs.path(), cert.as_path(), key.as_path()] {
        std::process::Command::new("chmod").arg("a+rX").arg(path).status().unwrap();
    }
    let fleet = common::sshd::SshFleet::start(1);
    let (http, https) = (common::free_port(), common::free_port());
    let project = Project::builder()
        .ferry_keys("target = \"ssh\"")
        .env("FERRY_SSH_CONFIG", fleet.ssh_config().to_str().unwrap())
        .ssh_region("syd", &[fleet.hosts()[0].spec()], 1)
        .http_service_keys("  force_https = true")
        .proxy(&format!(
            "  bind = \"host\"\n  tls_cert = \"{}\"\n  tls_key = \"{}\"\n  [ferry.proxy.ports]\n    80 = {http}\n    443 = {https}\n",
            cert.display(),
            key.display()
        ))
        .build();
    let run = project.deploy("v1");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let doors = project.front_doors();
    let plain: SocketAddr = doors.iter().find(|(_, a)| a.ends_with(&format!(":{http}"))).unwrap().1.parse().unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "-H", "Host: hello.test"])
        .arg(format!("http://{plain}/version?x=1"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("301 https://hello.test:{https}/version?x=1"));
    let secure = SocketAddr::new(plain.ip(), https);
    assert_eq!(curl_https(secure, &cert, "/version").1, "v1\n");
}

/// `GET path` with `Cookie: ferry_canary=BUCKET`: the answer of that side of a canary.
fn get_in_bucket(addr: SocketAddr, path: &str, bucket: u8) -> (u16, String) {
    exchange(addr, false, &mut None, path, &format!("Cookie: theme=dark; ferry_canary={bucket}\r\n"))
        .map_err(Failure::into_inner)
        .unwrap_or_else(|e| panic!("GET {path} on {addr} (bucket {bucket}): {e}"))
}

#[test]
fn a_canary_takes_its_share_of_clients_by_cookie_then_the_rest_rolls() {
    let project = Project::builder()
        .region("syd", 2)
        .ferry_keys("deploy.canary_time = \"4s\"\ndeploy.canary_weight = 30")
        .build();
    assert_eq!(project.deploy("v1").code, 0);
    let syd = door(&project, "syd");
    let load = Load::start(syd, 2);
    let mut deploy = project.spawn(&["deploy", "--version", "v2", "--strategy", "canary", "--json"]);
    let mut out = BufReader::new(deploy.stdout.take().unwrap());
    let watched = common::wait_for_event(&mut out, |e| e["event"] == "canary_watched").expect("the canary is watched");
    assert_eq!(watched["weight"], 30);
    // Clients below the weight get the canary, the others the old release.
    assert_eq!(get_in_bucket(syd, "/version", 0), (200, "v2\n".to_string()));
    assert_eq!(get_in_bucket(syd, "/version", 29), (200, "v2\n".to_string()));
    assert_eq!(get_in_bucket(syd, "/version", 30), (200, "v1\n".to_string()));
    assert_eq!(get(syd, "/version").0, 200);
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(deploy.wait().unwrap().success(), "{rest}");
    assert_eq!(get_in_bucket(syd, "/version", 99).1, "v2\n", "every client gets the new release");
    let instances = project.instances();
    assert!(instances.len() == 2 && instances.iter().all(|i| i["version"] == "v2"), "{instances:?}");
    let tally = load.finish();
    assert_eq!(tally.failed, 0, "{} of {} failed: {:?}", tally.failed, tally.ok, tally.errors);
}

#[test]
fn a_canary_that_answers_errors_is_removed_and_nothing_else_changes() {
    // Watched for a minute: only its errors can end the watch early.
    let project = Project::builder()
        .region("syd", 2)
        .ferry_keys("deploy.canary_time = \"60s\"\ndeploy.canary_weight = 50")
        .build();
    assert_eq!(project.deploy("v1").code, 0);
    let syd = door(&project, "syd");
    let load = Load::start(syd, 2);
    project.set_mode(Some("fail-requests"));
    let run = project.ferry(&["deploy", "--version", "v2", "--strategy", "canary"]);
    project.set_mode(None);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("canary_max_errors"), "{}", run.stderr);
    let tally = load.finish();
    let instances = project.instances();
    assert!(instances.len() == 2 && instances.iter().all(|i| i["version"] == "v1"), "{instances:?}");
    assert_eq!(get_in_bucket(syd, "/version", 0), (200, "v1\n".to_string()), "the canary takes no one any more");
    // The canary's share saw its errors until it was judged; everyone else was served.
    assert!(tally.failed > 0 && tally.failed < tally.ok, "{} failed, {} ok", tally.failed, tally.ok);
    assert!(tally.errors.iter().all(|e| e.starts_with("500")), "{:?}", tally.errors);
}

#[test]
fn a_second_service_is_served_on_each_instance_s_own_port_for_it() {
    let second = common::free_port();
    // Each instance answers on $PORT and, for the second service, on its port for it.
    let start = format!("PORT=$FERRY_PORT_{second} bin/hello & exec bin/hello");
    let project = Project::builder()
        .region("syd", 2)
        .start(Some(&start))
        .toml(&format!(
            "[[services]]\n  internal_port = {second}\n  protocol = \"tcp\"\n  [[services.ports]]\n    port = {second}\n    handlers = [\"http\"]\n  [[services.http_checks]]\n    path = \"/health\"\n"
        ))
        .build();
    let validate = project.ferry(&["config", "validate"]);
    assert!(!validate.stderr.contains("not served"), "{}", validate.stderr);
    project.deploy("v1").assert_ok();
    for port in [project.port, second] {
        let (status, body) = common::get(port, "/version").expect("the door answers");
        assert_eq!((status, body.trim()), (200, "v1"), "port {port}");
    }
    let env = project.ferry(&["exec", "--", "env"]);
    assert!(env.stdout.lines().any(|l| l.starts_with(&format!("FERRY_PORT_{second}="))), "{}", env.stdout);

    // Replaced beside the old ones, both services move to v2.
    project.deploy("v2").assert_ok();
    for port in [project.port, second] {
        assert_eq!(common::get(port, "/version").map(|(_, b)| b.trim().to_string()).as_deref(), Some("v2"));
    }

    // Its checks are made on that port: a release that does not listen there fails them.
    let config = project.path().join("fly.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(&format!("PORT=$FERRY_PORT_{second} bin/hello & "), "")).unwrap();
    let bad = project.ferry(&["deploy", "--version", "v3", "--wait-timeout", "3s"]);
    assert_eq!(bad.code, 1, "{}", bad.stderr);
    assert!(bad.stderr.contains("services[0].http_checks[0]"), "the second service's check failed: {}", bad.stderr);
    assert_eq!(common::get(second, "/version").map(|(_, b)| b.trim().to_string()).as_deref(), Some("v2"));
}
