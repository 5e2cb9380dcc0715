//! The sshd test harness itself: hosts answer as their own users, host keys are checked
//! strictly, stopping a host cuts its connections but not its processes, and a dropped
//! fleet leaves no user, process or home behind. Needs root (see `common/need.rs`).

#[path = "common/need.rs"]
mod need;
#[path = "common/sshd.rs"]
mod sshd;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sshd::SshFleet;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn assert_ssh_works(fleet: &SshFleet, i: usize) {
    let out = fleet.ssh(i, "true");
    assert!(out.status.success(), "ssh to {}: {}", fleet.hosts()[i].spec(), stderr(&out));
}

/// Starts a process on host `i` that outlives the ssh session; returns its pid.
fn start_sleeper(fleet: &SshFleet, i: usize) -> u32 {
    let out = fleet.ssh(i, "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!");
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("a pid")
}

/// Running, not merely a zombie waiting to be reaped.
fn running(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
}

fn user_exists(user: &str) -> bool {
    Command::new("id").arg(user).stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap().success()
}

#[test]
fn fleet_hosts_answer_as_their_own_users_on_their_own_ports() {
    if !need::root() {
        return;
    }
    let fleet = SshFleet::start(2);
    let [a, b] = fleet.hosts() else { panic!("two hosts") };
    assert_ne!(a.user, b.user);
    assert_ne!((&a.addr, a.port), (&b.addr, b.port));
    assert_eq!(a.spec(), format!("{}@{}:{}", a.user, a.addr, a.port));
    assert!(a.addr.starts_with("127.0.0."), "{}", a.addr);
    let known = std::fs::read_to_string(fleet.known_hosts()).unwrap();
    for (i, host) in fleet.hosts().iter().enumerate() {
        assert!(known.contains(&format!("[{}]:{} ssh-ed25519 AAAA", host.addr, host.port)), "{known}");
        let out = fleet.ssh(i, "id -un; echo $HOME");
        assert!(out.status.success(), "{}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.lines().collect::<Vec<_>>(), [host.user.as_str(), host.home.to_str().unwrap()]);
    }
    assert!(fleet.client_key().exists());
}

#[test]
fn unknown_host_key_is_refused() {
    if !need::root() {
        return;
    }
    let fleet = SshFleet::start(2);
    fleet.forget_host_key(0);
    let out = fleet.ssh(0, "true");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("Host key verification failed"), "{}", stderr(&out));
    assert_ssh_works(&fleet, 1);
}

#[test]
fn rotated_host_key_is_refused_as_changed_and_stays_refused() {
    if !need::root() {
        return;
    }
    let fleet = SshFleet::start(2);
    fleet.rotate_host_key(1);
    let out = fleet.ssh(1, "true");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("REMOTE HOST IDENTIFICATION HAS CHANGED"), "{}", stderr(&out));
    // Forgetting another host must not bring the rotated key into known_hosts.
    fleet.forget_host_key(0);
    assert!(stderr(&fleet.ssh(1, "true")).contains("IDENTIFICATION HAS CHANGED"));
}

/// `ssh -O check` on a multiplexed master connection.
fn master_alive(fleet: &SshFleet, socket: &Path, i: usize) -> bool {
    let host = &fleet.hosts()[i];
    Command::new("ssh")
        .arg("-F")
        .arg(fleet.ssh_config())
        .arg("-S")
        .arg(socket)
        .args(["-O", "check", "-p", &host.port.to_string()])
        .arg(format!("{}@{}", host.user, host.addr))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Ends a master connection left behind by a failed assertion.
struct Master<'a>(&'a SshFleet, &'a Path, usize);

impl Drop for Master<'_> {
    fn drop(&mut self) {
        let host = &self.0.hosts()[self.2];
        let _ = Command::new("ssh")
            .arg("-F")
            .arg(self.0.ssh_config())
            .arg("-S")
            .arg(self.1)
            .args(["-O", "exit", "-p", &host.port.to_string()])
            .arg(format!("{}@{}", host.user, host.addr))
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn stopped_host_drops_its_connections_but_keeps_its_processes_until_started_again() {
    if !need::root() {
        return;
    }
    let fleet = SshFleet::start(2);
    let sleeper = start_sleeper(&fleet, 1);
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("mux");
    let host = &fleet.hosts()[1];
    let opened = Command::new("ssh")
        .arg("-F")
        .arg(fleet.ssh_config())
        .arg("-S")
        .arg(&socket)
        .args(["-o", "ControlMaster=yes", "-o", "ControlPersist=yes", "-p", &host.port.to_string()])
        .arg(format!("{}@{}", host.user, host.addr))
        .arg("true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let _master = Master(&fleet, &socket, 1);
    assert!(opened.success() && master_alive(&fleet, &socket, 1), "master connection opens");

    fleet.stop(1);
    let out = fleet.ssh(1, "true");
    assert!(!out.status.success(), "a stopped host refuses ssh");
    let deadline = Instant::now() + Duration::from_secs(5);
    while master_alive(&fleet, &socket, 1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!master_alive(&fleet, &socket, 1), "stopping the host ends its master connection");
    assert!(running(sleeper), "the host's processes keep running");
    assert_ssh_works(&fleet, 0);

    fleet.start_again(1);
    assert_ssh_works(&fleet, 1);
    assert!(running(sleeper));
}

#[test]
fn killing_a_hosts_user_processes_leaves_its_sshd_running() {
    if !need::root() {
        return;
    }
    let fleet = SshFleet::start(1);
    let sleeper = start_sleeper(&fleet, 0);
    assert!(running(sleeper));
    fleet.kill_all_user_processes(0);
    assert!(!running(sleeper));
    assert_ssh_works(&fleet, 0);
}

#[test]
fn dropping_a_fleet_removes_its_users_processes_and_homes() {
    if !need::root() {
        return;
    }
    let fleet = SshFleet::start(2);
    let sleepers = [start_sleeper(&fleet, 0), start_sleeper(&fleet, 1)];
    let users: Vec<String> = fleet.hosts().iter().map(|h| h.user.clone()).collect();
    let homes: Vec<_> = fleet.hosts().iter().map(|h| h.home.clone()).collect();
    assert!(users.iter().all(|u| user_exists(u)) && homes.iter().all(|h| h.exists()));
    fleet.stop(1);

    drop(fleet);
    for user in &users {
        assert!(!user_exists(user), "{user} was removed");
    }
    for pid in sleepers {
        assert!(!running(pid), "process {pid} was killed");
    }
    for home in &homes {
        assert!(!home.exists(), "{} was removed", home.display());
    }
}
