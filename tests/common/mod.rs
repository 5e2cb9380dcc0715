//! Test harness: a throwaway project directory with a fly.toml and a release built
//! from the bundled `hello` example app, driven through the real `ferry` binary.
//! Dropping a project destroys what it deployed and kills any instance left behind.

#![allow(dead_code)]

pub mod need;
pub mod postgres;
pub mod sshd;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// The example app's binary, built once per test process.
pub fn hello_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target = root.join("target").join("hello");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--quiet", "--manifest-path"])
            .arg(root.join("examples/hello/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building examples/hello failed");
        target.join("release").join("hello")
    })
}

#[must_use]
pub struct ProjectBuilder {
    regions: Vec<(String, u32)>,
    primary: Option<String>,
    extra: String,
    deploy_extra: String,
    ferry_extra: String,
    start: Option<String>,
    env: Vec<(String, String)>,
    hosts: Vec<(String, Vec<String>)>,
    proxy: Option<String>,
    http_service_extra: String,
    build_command: Option<String>,
}

/// A TCP port nothing listens on now, for a project's front door (each test's doors
/// must not meet another's).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port()
}

impl ProjectBuilder {
    /// The keys of `[ferry.proxy]` (SSH projects get `bind = "host"` and their public
    /// port 80 moved to the project's port unless this is set).
    pub fn proxy(mut self, text: &str) -> Self {
        self.proxy = Some(text.to_string());
        self
    }

    /// An SSH region: `[ferry.regions.NAME] hosts = [...]` (count is set with `region`).
    pub fn ssh_region(mut self, name: &str, hosts: &[String], count: u32) -> Self {
        self.hosts.push((name.to_string(), hosts.to_vec()));
        self.region(name, count)
    }

    /// An environment variable for every ferry run of this project.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn region(mut self, name: &str, count: u32) -> Self {
        if self.primary.is_none() {
            self.primary = Some(name.to_string());
        }
        self.regions.push((name.to_string(), count));
        self
    }

    /// Extra top-level TOML (sections after the standard ones).
    pub fn toml(mut self, text: &str) -> Self {
        self.extra.push_str(text);
        self.extra.push('\n');
        self
    }

    /// Extra keys inside `[http_service]`.
    pub fn http_service_keys(mut self, text: &str) -> Self {
        self.http_service_extra.push_str(text);
        self.http_service_extra.push('\n');
        self
    }

    /// Extra keys inside `[deploy]`.
    pub fn deploy_keys(mut self, text: &str) -> Self {
        self.deploy_extra.push_str(text);
        self.deploy_extra.push('\n');
        self
    }

    /// Extra keys inside `[ferry]`.
    pub fn ferry_keys(mut self, text: &str) -> Self {
        self.ferry_extra.push_str(text);
        self.ferry_extra.push('\n');
        self
    }

    /// `[ferry.build] command`.
    pub fn build_command(mut self, command: &str) -> Self {
        self.build_command = Some(command.to_string());
        self
    }

    pub fn start(mut self, start: Option<&str>) -> Self {
        self.start = start.map(str::to_string);
        self
    }

    pub fn build(self) -> Project {
        let dir = tempfile::tempdir().expect("tempdir");
        let rel = dir.path().join("rel");
        std::fs::create_dir_all(rel.join("bin")).unwrap();
        std::fs::copy(hello_binary(), rel.join("bin/hello")).unwrap();
        let primary = self.primary.clone().unwrap_or_else(|| "syd".into());
        let port = free_port();
        let mut toml = format!(
            "app = \"hello\"\nprimary_region = \"{primary}\"\nkill_signal = \"SIGTERM\"\nkill_timeout = 5\n\n\
             [deploy]\n  wait_timeout = \"60s\"\n{}\n\
             [http_service]\n  internal_port = {port}\n{}  [[http_service.checks]]\n    path = \"/health\"\n    interval = \"10s\"\n    timeout = \"2s\"\n\n",
            self.deploy_extra, self.http_service_extra
        );
        toml.push_str(&self.extra);
        toml.push_str("\n[ferry]\n");
        toml.push_str(&self.ferry_extra);
        let proxy = match (&self.proxy, self.hosts.is_empty()) {
            (Some(proxy), _) => Some(proxy.clone()),
            (None, false) => Some(format!("  bind = \"host\"\n  [ferry.proxy.ports]\n    80 = {port}\n")),
            (None, true) => None,
        };
        if let Some(proxy) = proxy {
            let _ = write!(toml, "\n[ferry.proxy]\n{proxy}\n");
        }
        toml.push_str("\n[ferry.build]\n  path = \"rel\"\n");
        if let Some(command) = &self.build_command {
            let _ = writeln!(toml, "  command = {}", toml_string(command));
        }
        if let Some(start) = &self.start {
            let _ = writeln!(toml, "  start = {}", toml_string(start));
        }
        for (name, count) in &self.regions {
            let _ = write!(toml, "\n[ferry.regions.{name}]\n  count = {count}\n");
            if let Some((_, hosts)) = self.hosts.iter().find(|(n, _)| n == name) {
                let list: Vec<String> = hosts.iter().map(|h| toml_string(h)).collect();
                let _ = writeln!(toml, "  hosts = [{}]", list.join(", "));
            }
        }
        // `{dir}` in any fragment stands for the project directory.
        let toml = toml.replace("{dir}", &dir.path().display().to_string());
        std::fs::write(dir.path().join("fly.toml"), toml).unwrap();
        Project { dir, env: self.env, port }
    }
}

/// A TOML basic string holding `text`.
pub fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

pub struct Project {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    /// The service's port: the local front door's (and SSH hosts' public port 80).
    pub port: u16,
}

impl Project {
    pub fn builder() -> ProjectBuilder {
        ProjectBuilder {
            regions: Vec::new(),
            primary: None,
            extra: String::new(),
            deploy_extra: String::new(),
            ferry_extra: String::new(),
            start: Some("bin/hello".into()),
            env: Vec::new(),
            hosts: Vec::new(),
            proxy: None,
            http_service_extra: String::new(),
            build_command: None,
        }
    }

    /// Two regions (syd primary, lax) with two instances each.
    pub fn two_by_two() -> Project {
        Self::builder().region("syd", 2).region("lax", 2).build()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bakes a mode into the next release (`None`: a healthy release).
    pub fn set_mode(&self, mode: Option<&str>) {
        let file = self.path().join("rel/mode");
        match mode {
            Some(mode) => std::fs::write(file, mode).unwrap(),
            None => {
                let _ = std::fs::remove_file(file);
            }
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(FERRY);
        command.args(args).current_dir(self.path()).stdin(Stdio::null());
        // Each project has an agent of its own: tests that stop or kill one leave the
        // others alone.
        command.env("FERRY_STATE_DIR", self.state_dir());
        // Tables get every column unless a test asks for a width.
        command.env_remove("COLUMNS");
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// The state directory of this project's local agent.
    pub fn state_dir(&self) -> PathBuf {
        self.path().join(".agent-state")
    }

    pub fn ferry(&self, args: &[&str]) -> Run {
        let output = self.command(args).output().expect("ferry runs");
        Run::from(output)
    }

    /// Runs ferry with `input` piped on its stdin.
    pub fn with_stdin(&self, args: &[&str], input: &[u8]) -> Run {
        let mut child =
            self.command(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), input).unwrap();
        drop(child.stdin.take());
        Run::from(child.wait_with_output().unwrap())
    }

    /// `ferry secrets set KEY=-` with `value` piped on stdin.
    pub fn set_secret(&self, key: &str, value: &[u8]) -> Run {
        self.with_stdin(&["secrets", "set", &format!("{key}=-"), "--json"], value)
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("ferry starts")
    }

    pub fn deploy(&self, version: &str) -> Run {
        self.ferry(&["deploy", "--version", version])
    }

    pub fn status(&self) -> Value {
        let run = self.ferry(&["status", "--json"]);
        assert_eq!(run.code, 0, "status failed: {}", run.stderr);
        run.data()
    }

    /// `ip:port` of every front door, by region, as `status --json` lists them.
    pub fn front_doors(&self) -> Vec<(String, String)> {
        self.status()["front_doors"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|d| (d["region"].as_str().unwrap().to_string(), d["address"].as_str().unwrap().to_string()))
            .collect()
    }

    pub fn instances(&self) -> Vec<Value> {
        self.status()["instances"].as_array().cloned().unwrap_or_default()
    }

    /// `(region, port)` of every instance.
    pub fn ports(&self) -> Vec<(String, u16)> {
        self.instances()
            .iter()
            .map(|i| (i["region"].as_str().unwrap().to_string(), u16::try_from(i["port"].as_u64().unwrap()).unwrap()))
            .collect()
    }

    /// What every instance answers at /version.
    pub fn versions_served(&self) -> Vec<String> {
        self.ports()
            .iter()
            .map(|(_, port)| get(*port, "/version").map_or_else(|| "down".into(), |(_, body)| body.trim().to_string()))
            .collect()
    }

    pub fn releases(&self) -> Vec<Value> {
        let run = self.ferry(&["releases", "--json"]);
        assert_eq!(run.code, 0, "releases failed: {}", run.stderr);
        run.rows()
    }

    /// Pids recorded in every instance.json under the local target.
    pub fn recorded_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        collect_pids(&self.path().join(".ferry/local"), &mut pids);
        pids
    }
}

fn collect_pids(dir: &Path, pids: &mut Vec<u32>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_pids(&path, pids);
        } else if path.file_name().is_some_and(|n| n == "instance.json") {
            if let Ok(value) = serde_json::from_str::<Value>(&std::fs::read_to_string(&path).unwrap_or_default()) {
                if let Some(pid) = value["pid"].as_u64().filter(|p| *p > 0) {
                    pids.push(u32::try_from(pid).unwrap());
                }
            }
        }
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let pids = self.recorded_pids();
        let _ = self.command(&["destroy", "--yes", "-q"]).output();
        // Anything destroy could not stop goes by pid, but only a process that still
        // runs inside this project's directory (a pid may have been reused since).
        for pid in pids {
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            if cwd.starts_with(self.path()) {
                let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).stderr(Stdio::null()).status();
            }
        }
    }
}

#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    /// The JSON events printed with `--json`.
    pub fn events(&self) -> Vec<Value> {
        self.stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// The data rows of a read command's `--json` output (lines that are no event),
    /// after checking the output is what `--json` promises: one JSON object per line,
    /// the last a `finished` or `error` event.
    #[track_caller]
    pub fn rows(&self) -> Vec<Value> {
        let lines: Vec<Value> = self
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
            .collect();
        assert!(lines.iter().all(Value::is_object), "one object per line: {}", self.stdout);
        let last = lines.last().map(|l| l["event"].clone()).unwrap_or_default();
        assert!(last == "finished" || last == "error", "ends with finished or error: {}", self.stdout);
        lines.into_iter().filter(|l| l.get("event").is_none()).collect()
    }

    /// The one data object of a read command's `--json` output.
    #[track_caller]
    pub fn data(&self) -> Value {
        let rows = self.rows();
        assert_eq!(rows.len(), 1, "one data object: {}", self.stdout);
        rows.into_iter().next().unwrap()
    }

    pub fn finished(&self) -> Value {
        self.events().into_iter().rev().find(|e| e["event"] == "finished").unwrap_or(Value::Null)
    }

    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert_eq!(self.code, 0, "expected success\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
}

/// A plain HTTP/1.0 GET on loopback: `(status, body)`, or `None` when nothing answers.
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// Waits until `check` gives a value, looking every 50 ms; fails the test after `limit`.
pub fn eventually<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "the condition never held within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads `child`'s stdout JSON lines until `pred` matches one (or the stream ends).
pub fn wait_for_event(reader: &mut impl std::io::BufRead, pred: impl Fn(&Value) -> bool) -> Option<Value> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Ok(value) = serde_json::from_str::<Value>(&line) {
            if pred(&value) {
                return Some(value);
            }
        }
    }
}

/// Every line of `before` is still in `after`, in the same order (an edit only added
/// its own lines).
#[track_caller]
pub fn assert_lines_kept(before: &str, after: &str) {
    let mut rest = after.lines();
    for line in before.lines() {
        assert!(rest.any(|l| l == line), "line {line:?} was changed or moved:\n{after}");
    }
}

/// A project on the SSH fleet: `(region, host indexes, count)`, the first region
/// primary; `extra_ferry`, more `[ferry]` keys.
pub fn ssh_project(fleet: &sshd::SshFleet, layout: &[(&str, &[usize], u32)], extra_ferry: &str) -> Project {
    let mut builder = Project::builder()
        .ferry_keys(&format!("target = \"ssh\"\n{extra_ferry}"))
        .env("FERRY_SSH_CONFIG", fleet.ssh_config().to_str().unwrap());
    for (name, hosts, count) in layout {
        let specs: Vec<String> = hosts.iter().map(|i| fleet.hosts()[*i].spec()).collect();
        builder = builder.ssh_region(name, &specs, *count);
    }
    builder.build()
}
