//! Real OpenSSH hosts for tests: each an `sshd` on its own loopback address and free
//! port, with its own fresh unprivileged user and home, key-only authentication, and a
//! client config with a generated key and a strict known_hosts. Needs root (users are
//! created with `useradd`). Dropping the fleet stops every sshd by pid, ends the
//! users' processes (all started by the test), and removes the users.

use std::fmt::Write as _;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const SSHD: &str = "/usr/sbin/sshd";

pub struct SshHost {
    pub name: String,
    pub addr: String,
    pub port: u16,
    pub user: String,
    pub home: PathBuf,
    key: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

impl SshHost {
    pub fn spec(&self) -> String {
        format!("{}@{}:{}", self.user, self.addr, self.port)
    }
}

pub struct SshFleet {
    dir: tempfile::TempDir,
    hosts: Vec<SshHost>,
    daemons: Mutex<Vec<Option<Child>>>,
    client_key: PathBuf,
    known_hosts: PathBuf,
    ssh_config: PathBuf,
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{program}: {e}"))
}

#[track_caller]
fn run_ok(program: &str, args: &[&str]) {
    let out = run(program, args);
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Installs openssh-server once when it is missing (as root, with apt-get).
fn ensure_sshd() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if !Path::new(SSHD).exists() {
            let ok = Command::new("sh")
                .arg("-c")
                .arg("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client")
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok && Path::new(SSHD).exists(), "openssh-server is needed and could not be installed");
        }
        fs::create_dir_all("/run/sshd").unwrap();
    });
}

fn random_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    h.write_u32(std::process::id());
    let mut n = h.finish();
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut name = String::from("fy");
    for _ in 0..6 {
        name.push(alphabet[(n % 36) as usize] as char);
        n /= 36;
    }
    name
}

/// `useradd` takes a lock on /etc/passwd; parallel tests may contend for it.
fn add_user(user: &str, home: &Path) {
    for _ in 0..50 {
        let out = run("useradd", &["-m", "-d", home.to_str().unwrap(), "-s", "/bin/sh", user]);
        if out.status.success() {
            run_ok("usermod", &["-p", "*", user]);
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("useradd {user} kept failing");
}

fn wait_for_port(addr: &str, port: u16, open: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let connected =
            TcpStream::connect_timeout(&format!("{addr}:{port}").parse().unwrap(), Duration::from_millis(200)).is_ok();
        if connected == open {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{addr}:{port} did not become {}", if open { "reachable" } else { "closed" });
}

impl SshFleet {
    pub fn start(n: usize) -> SshFleet {
        ensure_sshd();
        let dir = tempfile::tempdir().unwrap();
        run_ok("chmod", &["0755", dir.path().to_str().unwrap()]);
        let client_key = dir.path().join("client_key");
        run_ok("ssh-keygen", &["-t", "ed25519", "-N", "", "-q", "-f", client_key.to_str().unwrap()]);
        let client_pub = fs::read_to_string(client_key.with_extension("pub")).unwrap();
        fs::create_dir_all(dir.path().join("authorized_keys")).unwrap();
        let mut hosts = Vec::new();
        for i in 0..n {
            let name = format!("h{i}");
            let addr = format!("127.0.0.{}", 10 + i);
            let port = TcpListener::bind((addr.as_str(), 0)).unwrap().local_addr().unwrap().port();
            let user = random_name();
            let home = dir.path().join(format!("home-{user}"));
            add_user(&user, &home);
            fs::write(dir.path().join("authorized_keys").join(&user), &client_pub).unwrap();
            let key = dir.path().join(format!("{name}_host_key"));
            run_ok("ssh-keygen", &["-t", "ed25519", "-N", "", "-q", "-f", key.to_str().unwrap()]);
            let config = dir.path().join(format!("{name}_sshd_config"));
            let text = format!(
                "ListenAddress {addr}:{port}\nHostKey {key}\nPidFile {pid}\nAuthorizedKeysFile {auth}/%u\nStrictModes no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUsePAM no\n\
                 AllowUsers {user}\nPermitRootLogin no\nX11Forwarding no\nAllowTcpForwarding yes\nAllowStreamLocalForwarding yes\n\
                 MaxSessions 100\nMaxStartups 100\nLogLevel ERROR\nSubsystem sftp internal-sftp\n",
                key = key.display(),
                pid = dir.path().join(format!("{name}.pid")).display(),
                auth = dir.path().join("authorized_keys").display(),
            );
            fs::write(&config, text).unwrap();
            let log = dir.path().join(format!("{name}_sshd.log"));
            hosts.push(SshHost { name, addr, port, user, home, key, config, log });
        }
        let known_hosts = dir.path().join("known_hosts");
        let ssh_config = dir.path().join("ssh_config");
        fs::write(
            &ssh_config,
            format!(
                "Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  GlobalKnownHostsFile /dev/null\n  \
                 BatchMode yes\n  ConnectTimeout 5\n  LogLevel ERROR\n",
                client_key.display(),
                known_hosts.display()
            ),
        )
        .unwrap();
        let fleet = SshFleet {
            dir,
            daemons: Mutex::new(hosts.iter().map(|_| None).collect()),
            hosts,
            client_key,
            known_hosts,
            ssh_config,
        };
        fleet.write_known_hosts(None);
        for i in 0..n {
            fleet.start_again(i);
        }
        fleet
    }

    pub fn hosts(&self) -> &[SshHost] {
        &self.hosts
    }

    pub fn ssh_config(&self) -> &Path {
        &self.ssh_config
    }

    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    pub fn client_key(&self) -> &Path {
        &self.client_key
    }

    /// known_hosts with every host's current key (except `skip`).
    fn write_known_hosts(&self, skip: Option<usize>) {
        let mut text = String::new();
        for (i, host) in self.hosts.iter().enumerate() {
            if Some(i) == skip {
                continue;
            }
            let key = fs::read_to_string(host.key.with_extension("pub")).unwrap();
            let mut parts = key.split_whitespace();
            let (kind, data) = (parts.next().unwrap(), parts.next().unwrap());
            let _ = writeln!(text, "[{}]:{} {kind} {data}", host.addr, host.port);
        }
        fs::write(&self.known_hosts, text).unwrap();
    }

    /// Starts (or restarts) host `i`'s sshd and waits until it accepts connections.
    pub fn start_again(&self, i: usize) {
        let host = &self.hosts[i];
        let check = run(SSHD, &["-t", "-f", host.config.to_str().unwrap()]);
        assert!(check.status.success(), "sshd config: {}", String::from_utf8_lossy(&check.stderr));
        let log = fs::File::create(&host.log).unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f", host.config.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemons.lock().unwrap()[i] = Some(child);
        wait_for_port(&host.addr, host.port, true);
    }

    /// Stops host `i`'s sshd and every connection it serves (so a multiplexed master
    /// connection dies too), leaving the user's other processes running.
    pub fn stop(&self, i: usize) {
        let Some(mut child) = self.daemons.lock().unwrap()[i].take() else { return };
        let listener = child.id();
        let mut doomed =
            descendants(listener).into_iter().filter(|pid| comm(*pid).starts_with("sshd")).collect::<Vec<_>>();
        doomed.push(listener);
        for pid in doomed {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).stderr(Stdio::null()).status();
        }
        let _ = child.wait();
        wait_for_port(&self.hosts[i].addr, self.hosts[i].port, false);
    }

    /// Like a host crash: ends every process of host `i`'s user.
    pub fn kill_all_user_processes(&self, i: usize) {
        let _ = run("pkill", &["-KILL", "-u", &self.hosts[i].user]);
    }

    /// A new host key for host `i` (known_hosts keeps the old one): clients must see it
    /// as changed.
    pub fn rotate_host_key(&self, i: usize) {
        self.stop(i);
        let key = &self.hosts[i].key;
        let _ = fs::remove_file(key);
        let _ = fs::remove_file(key.with_extension("pub"));
        run_ok("ssh-keygen", &["-t", "ed25519", "-N", "", "-q", "-f", key.to_str().unwrap()]);
        self.start_again(i);
    }

    /// Removes host `i` from known_hosts: an unknown host.
    pub fn forget_host_key(&self, i: usize) {
        self.write_known_hosts(Some(i));
    }

    /// Runs `command` on host `i` as its user, strictly checking its key.
    pub fn ssh(&self, i: usize, command: &str) -> Output {
        let host = &self.hosts[i];
        Command::new("ssh")
            .args([
                "-F",
                self.ssh_config.to_str().unwrap(),
                "-o",
                "StrictHostKeyChecking=yes",
                "-p",
                &host.port.to_string(),
            ])
            .arg(format!("{}@{}", host.user, host.addr))
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}

fn parent(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Every process below `root`.
fn descendants(root: u32) -> Vec<u32> {
    let all: Vec<u32> =
        fs::read_dir("/proc").unwrap().flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        let children: Vec<u32> = all.iter().copied().filter(|c| parent(*c) == Some(p) && !found.contains(c)).collect();
        found.extend(children);
        i += 1;
    }
    found.remove(0);
    found
}

impl Drop for SshFleet {
    fn drop(&mut self) {
        for i in 0..self.hosts.len() {
            self.stop(i);
        }
        for host in &self.hosts {
            let _ = run("pkill", &["-KILL", "-u", &host.user]);
            for _ in 0..50 {
                if run("userdel", &["-r", &host.user]).status.success() {
                    break;
                }
                // userdel refuses while the user's processes are still exiting.
                let _ = run("pkill", &["-KILL", "-u", &host.user]);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = &self.dir;
    }
}
