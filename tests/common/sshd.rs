//! Real OpenSSH hosts for tests: each an `sshd` on its own loopback address and free
//! port, with its own fresh unprivileged user and home, key-only authentication, and a
//! client config with a generated key and a strict known_hosts. Needs root (users are
//! created with `useradd`); installs openssh when it is missing. Dropping the fleet
//! stops every sshd, ends the users' processes (all started by the tests) and removes
//! the users and their files. It never touches a process or user it did not create.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

const SSHD: &str = "/usr/sbin/sshd";
/// How long an sshd may take to accept connections, or a stopped one to go away.
const PATIENCE: Duration = Duration::from_secs(10);

pub struct SshHost {
    /// `h0`, `h1`, ...: the host's index in the fleet.
    pub name: String,
    pub addr: String,
    pub port: u16,
    pub user: String,
    pub home: PathBuf,
    uid: u32,
    dir: PathBuf,
    /// `AllowTcpForwarding no` (a common hardening baseline).
    no_forwarding: bool,
}

impl SshHost {
    /// `user@addr:port`, as written in fly.toml.
    pub fn spec(&self) -> String {
        format!("{}@{}:{}", self.user, self.addr, self.port)
    }

    fn host_key(&self) -> PathBuf {
        self.dir.join("host_key")
    }

    fn config(&self) -> PathBuf {
        self.dir.join("sshd_config")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("sshd.log")
    }

    /// The start of this host's known_hosts line, up to the key type.
    fn known_hosts_prefix(&self) -> String {
        format!("[{}]:{} ", self.addr, self.port)
    }
}

pub struct SshFleet {
    dir: tempfile::TempDir,
    hosts: Vec<SshHost>,
    /// Each host's listening sshd; `None` while stopped.
    daemons: Mutex<Vec<Option<Child>>>,
    client_key: PathBuf,
    known_hosts: PathBuf,
    ssh_config: PathBuf,
}

/// Whether this process runs as root (a fleet needs it; tests skip without it).
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

impl SshFleet {
    /// `n` hosts, each answering on `127.0.0.N:port` as its own new user.
    pub fn start(n: usize) -> SshFleet {
        assert!(is_root(), "an ssh fleet needs root (it creates users); skip the test when not root");
        assert!((1..=200).contains(&n), "a fleet has 1 to 200 hosts");
        ensure_openssh();
        let dir = tempfile::tempdir().expect("tempdir");
        make_traversable(dir.path());
        fs::create_dir(dir.path().join("authorized_keys")).unwrap();
        make_traversable(&dir.path().join("authorized_keys"));
        let client_key = dir.path().join("client_key");
        generate_key(&client_key);
        let mut fleet = SshFleet {
            known_hosts: dir.path().join("known_hosts"),
            ssh_config: dir.path().join("ssh_config"),
            client_key,
            dir,
            hosts: Vec::new(),
            daemons: Mutex::new(Vec::new()),
        };
        fleet.write_client_config();
        // Concurrent fleets draw different addresses, so a port one of them leaves free
        // while a host is stopped is unlikely to be taken by another.
        let first = 2 + random() % (249 - n as u64);
        for i in 0..n {
            // Pushed one by one: if a later host fails, Drop still removes the earlier ones.
            fleet.add_host(i, &format!("127.0.0.{}", first + i as u64));
        }
        let mut known = String::new();
        for host in &fleet.hosts {
            let key = fs::read_to_string(host.host_key().with_extension("pub")).unwrap();
            let mut parts = key.split_whitespace();
            let (kind, data) = (parts.next().unwrap(), parts.next().unwrap());
            let _ = writeln!(known, "{}{kind} {data}", host.known_hosts_prefix());
        }
        fs::write(&fleet.known_hosts, known).unwrap();
        fleet
    }

    pub fn hosts(&self) -> &[SshHost] {
        &self.hosts
    }

    /// A client config for `ssh -F`: the fleet's key and known_hosts, strict checking,
    /// batch mode.
    pub fn ssh_config(&self) -> &Path {
        &self.ssh_config
    }

    /// Every host's key, as `[127.0.0.N]:port ssh-ed25519 AAAA...`.
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    pub fn client_key(&self) -> &Path {
        &self.client_key
    }

    /// Stops host `i`'s sshd and every connection it serves (so a multiplexed master
    /// connection dies too), leaving the user's other processes running: a host whose
    /// network went away.
    pub fn stop(&self, i: usize) {
        let daemon = self.daemons.lock().unwrap()[i].take();
        if let Some(daemon) = daemon {
            halt(daemon);
        }
        let host = &self.hosts[i];
        assert!(wait_for_port(&host.addr, host.port, false), "{}:{} still accepts connections", host.addr, host.port);
    }

    /// Starts host `i`'s sshd again (same key, port and user, unless the key was
    /// rotated) and waits until it accepts connections.
    pub fn start_again(&self, i: usize) {
        self.stop(i);
        let daemon = launch(&self.hosts[i]).unwrap_or_else(|log| panic!("sshd for {}: {log}", self.hosts[i].spec()));
        self.daemons.lock().unwrap()[i] = Some(daemon);
    }

    /// Hardens host `i` the way many baselines do: no TCP (or socket) forwarding. Its
    /// sshd restarts with the new config.
    pub fn forbid_forwarding(&mut self, i: usize) {
        self.hosts[i].no_forwarding = true;
        write_sshd_config(&self.hosts[i], self.dir.path());
        self.start_again(i);
    }

    /// The uid of host `i`'s user.
    pub fn uid(&self, i: usize) -> u32 {
        self.hosts[i].uid
    }

    /// Like a host crash: kills every process of host `i`'s user (its sshd listener
    /// keeps running) and waits until none is left running.
    pub fn kill_all_user_processes(&self, i: usize) {
        let host = &self.hosts[i];
        assert!(kill_user_processes(host.uid), "processes of {} survived SIGKILL", host.user);
    }

    /// A new host key for host `i`, which then restarts; known_hosts keeps the old key,
    /// so clients must refuse the host as changed.
    pub fn rotate_host_key(&self, i: usize) {
        self.stop(i);
        let key = self.hosts[i].host_key();
        fs::remove_file(&key).unwrap();
        fs::remove_file(key.with_extension("pub")).unwrap();
        generate_key(&key);
        self.start_again(i);
    }

    /// Removes host `i`'s line from known_hosts: an unknown host.
    pub fn forget_host_key(&self, i: usize) {
        let prefix = self.hosts[i].known_hosts_prefix();
        let text = fs::read_to_string(&self.known_hosts).unwrap();
        let mut kept = String::new();
        for line in text.lines().filter(|line| !line.starts_with(&prefix)) {
            kept.push_str(line);
            kept.push('\n');
        }
        fs::write(&self.known_hosts, kept).unwrap();
    }

    /// Runs `command` on host `i` as its user; its stdout, which must succeed.
    #[track_caller]
    pub fn run_on(&self, i: usize, command: &str) -> String {
        let out = self.ssh(i, command);
        assert!(out.status.success(), "`{command}` on host {i}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `command` (a shell command line) on host `i` as its user, with the fleet's
    /// client config.
    pub fn ssh(&self, i: usize, command: &str) -> Output {
        let host = &self.hosts[i];
        Command::new("ssh")
            .arg("-F")
            .arg(&self.ssh_config)
            .args(["-p", &host.port.to_string()])
            .arg(format!("{}@{}", host.user, host.addr))
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .expect("ssh runs")
    }

    fn write_client_config(&self) {
        let text = format!(
            "Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  GlobalKnownHostsFile /dev/null\n  \
             StrictHostKeyChecking yes\n  BatchMode yes\n  ConnectTimeout 5\n  LogLevel ERROR\n",
            self.client_key.display(),
            self.known_hosts.display()
        );
        fs::write(&self.ssh_config, text).unwrap();
    }

    fn add_host(&mut self, i: usize, addr: &str) {
        let name = format!("h{i}");
        let dir = self.dir.path().join(&name);
        fs::create_dir(&dir).unwrap();
        make_traversable(&dir);
        let home = dir.join("home");
        let (user, uid) = add_user(&home);
        let host = SshHost { name, addr: addr.to_string(), port: 0, user, home, uid, dir, no_forwarding: false };
        let client_pub = fs::read_to_string(self.client_key.with_extension("pub")).unwrap();
        fs::write(self.dir.path().join("authorized_keys").join(&host.user), client_pub).unwrap();
        generate_key(&host.host_key());
        self.daemons.lock().unwrap().push(None);
        self.hosts.push(host);
        let host = self.hosts.last_mut().unwrap();
        // The port is free when read but only taken when sshd binds it: retry on a race.
        for attempt in 1..=5 {
            let probe = TcpListener::bind((addr, 0)).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            host.port = probe.local_addr().unwrap().port();
            write_sshd_config(host, self.dir.path());
            drop(probe);
            match launch(host) {
                Ok(daemon) => {
                    self.daemons.lock().unwrap()[i] = Some(daemon);
                    return;
                }
                Err(log) if attempt < 5 && log.contains("Address already in use") => {}
                Err(log) => panic!("sshd for {}: {log}", host.spec()),
            }
        }
    }
}

impl Drop for SshFleet {
    fn drop(&mut self) {
        let daemons = self.daemons.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        for daemon in daemons.iter_mut() {
            if let Some(daemon) = daemon.take() {
                halt(daemon);
            }
        }
        for host in &self.hosts {
            remove_user(host);
        }
        // The temp dir (homes included) goes when `dir` drops.
    }
}

/// Installs openssh (server and client) once when it is missing, as root with apt-get;
/// a lock keeps test binaries running at once from installing together.
fn ensure_openssh() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let present = || Path::new(SSHD).exists() && Path::new("/usr/bin/ssh").exists();
        if !present() {
            let out = Command::new("flock")
                .args(["/tmp/ferry-tests-openssh.lock", "sh", "-c"])
                .arg(
                    "[ -x /usr/sbin/sshd ] && [ -x /usr/bin/ssh ] && exit 0; apt-get update -qq && \
                     DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client",
                )
                .stdin(Stdio::null())
                .output()
                .expect("flock runs");
            assert!(
                present(),
                "openssh is needed and could not be installed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Debian's sshd insists on its privilege separation directory.
        fs::create_dir_all("/run/sshd").unwrap();
        fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755)).unwrap();
    });
}

fn write_sshd_config(host: &SshHost, fleet_dir: &Path) {
    let text = format!(
        "ListenAddress {addr}:{port}\nHostKey {key}\nPidFile {pid}\nAuthorizedKeysFile {keys}/%u\nStrictModes no\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUsePAM no\n\
         AllowUsers {user}\nPermitRootLogin no\nX11Forwarding no\nAllowTcpForwarding {forwarding}\n\
         AllowStreamLocalForwarding {forwarding}\nMaxSessions 100\nMaxStartups 100\nLogLevel ERROR\n\
         Subsystem sftp internal-sftp\n",
        forwarding = if host.no_forwarding { "no" } else { "yes" },
        addr = host.addr,
        port = host.port,
        key = host.host_key().display(),
        pid = host.dir.join("sshd.pid").display(),
        keys = fleet_dir.join("authorized_keys").display(),
        user = host.user,
    );
    fs::write(host.config(), text).unwrap();
}

/// Checks the host's config, starts its sshd and waits until it accepts connections;
/// on failure, the error is sshd's log.
fn launch(host: &SshHost) -> Result<Child, String> {
    let config = host.config();
    let check = run(SSHD, &["-t", "-f", config.to_str().unwrap()]);
    if !check.status.success() {
        return Err(format!("`sshd -t` rejected {}: {}", config.display(), String::from_utf8_lossy(&check.stderr)));
    }
    let log = fs::File::create(host.log()).unwrap();
    let mut daemon = Command::new(SSHD)
        .args(["-D", "-e", "-f", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("sshd starts");
    let log = || fs::read_to_string(host.log()).unwrap_or_default();
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(Some(status)) = daemon.try_wait() {
            return Err(format!("sshd exited ({status}): {}", log()));
        }
        if connects(&host.addr, host.port) {
            return Ok(daemon);
        }
        if Instant::now() > deadline {
            halt(daemon);
            return Err(format!("sshd did not accept connections within {PATIENCE:?}: {}", log()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills a listening sshd and all its per-connection sshd processes (not what they
/// run for the user). Freezes the tree first so nothing forks past the sweep.
fn halt(mut daemon: Child) {
    let listener = daemon.id();
    signal("STOP", &[listener]);
    let mut frozen = vec![listener];
    loop {
        let fresh: Vec<u32> = processes()
            .into_iter()
            .filter(|p| frozen.contains(&p.parent) && !frozen.contains(&p.pid) && p.comm.starts_with("sshd"))
            .map(|p| p.pid)
            .collect();
        if fresh.is_empty() {
            break;
        }
        signal("STOP", &fresh);
        frozen.extend(fresh);
    }
    signal("KILL", &frozen);
    let _ = daemon.wait();
}

fn connects(addr: &str, port: u16) -> bool {
    let addr = format!("{addr}:{port}").parse().unwrap();
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Polls until `addr:port` accepts (or refuses) connections; false on timeout.
fn wait_for_port(addr: &str, port: u16, open: bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if connects(addr, port) == open {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A new user `fyXXXXXX` with its home at `home` and no password (but not locked,
/// which sshd would refuse even for keys): returns its name and uid. `useradd` locks
/// /etc/passwd, and parallel tests contend for it.
fn add_user(home: &Path) -> (String, u32) {
    let mut last = String::new();
    for _ in 0..50 {
        let user = random_name();
        let out = run("useradd", &["-m", "-d", home.to_str().unwrap(), "-s", "/bin/sh", "-p", "*", &user]);
        if out.status.success() {
            let id = run("id", &["-u", &user]);
            let uid = String::from_utf8_lossy(&id.stdout).trim().parse().expect("a uid");
            return (user, uid);
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("useradd kept failing: {last}");
}

/// Ends the user's processes and removes the user, its group and its home. Never
/// panics: it runs in Drop.
fn remove_user(host: &SshHost) {
    // The agent may have written a crontab for its @reboot entry.
    let _ = Command::new("crontab").args(["-r", "-u", &host.user]).stderr(Stdio::null()).status();
    for attempt in 0..50 {
        kill_user_processes(host.uid);
        // An orphan killed a moment ago stays a zombie (still "using" the uid) until
        // init reaps it; after a few tries, remove the user regardless.
        let args: &[&str] = if attempt < 5 { &["-r", &host.user] } else { &["-r", "-f", &host.user] };
        let _ = run("userdel", args);
        if !run("id", &["-u", &host.user]).status.success() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("warning: could not remove test user {}", host.user);
}

/// SIGKILLs every running process of `uid` until none is left (zombies do not count);
/// false if some survived.
fn kill_user_processes(uid: u32) -> bool {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let running: Vec<u32> = processes()
            .into_iter()
            .filter(|p| p.uid == Some(uid) && p.state != 'Z' && p.state != 'X')
            .map(|p| p.pid)
            .collect();
        if running.is_empty() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        signal("KILL", &running);
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Proc {
    pid: u32,
    parent: u32,
    comm: String,
    state: char,
    /// Real uid.
    uid: Option<u32>,
}

/// A snapshot of /proc (processes that exit while it is read are skipped).
fn processes() -> Vec<Proc> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let comm = stat.get(stat.find('(')? + 1..stat.rfind(')')?)?.to_string();
            let mut rest = stat.get(stat.rfind(')')? + 2..)?.split_whitespace();
            let state = rest.next()?.chars().next()?;
            let parent = rest.next()?.parse().ok()?;
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")?.split_whitespace().next()?.parse().ok());
            Some(Proc { pid, parent, comm, state, uid })
        })
        .collect()
}

/// Sends `sig` (a name: STOP, KILL) to each pid, ignoring ones already gone.
fn signal(sig: &str, pids: &[u32]) {
    let _ = Command::new("sh")
        .args(["-c", "kill -s \"$0\" \"$@\"", sig])
        .args(pids.iter().map(u32::to_string))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn generate_key(path: &Path) {
    let out = run("ssh-keygen", &["-t", "ed25519", "-N", "", "-q", "-f", path.to_str().unwrap()]);
    assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
}

/// sshd and the users must reach their homes and keys below the temp dir.
fn make_traversable(dir: &Path) {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    hasher.write_u128(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos());
    hasher.finish()
}

/// `fy` and six random lowercase letters or digits.
fn random_name() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut n = random();
    let mut name = String::from("fy");
    for _ in 0..6 {
        name.push(char::from(ALPHABET[usize::try_from(n % 36).unwrap()]));
        n /= 36;
    }
    name
}
