//! ferry's agent on real `sshd` hosts: put there by ferry itself (once), deploys that
//! need no TCP forwarding, and a host that reboots brings its instances back through
//! the boot entry the agent installed. Needs root (see `common::need`).

mod common;

use std::time::{Duration, Instant};

use common::sshd::SshFleet;
use common::{get, Project};

#[test]
fn deploys_succeed_on_a_host_that_forbids_tcp_forwarding() {
    if !common::need::root() {
        return;
    }
    let mut fleet = SshFleet::start(1);
    fleet.forbid_forwarding(0);
    let project = common::ssh_project(&fleet, &[("syd", &[0], 2)], "");
    project.deploy("v1").assert_ok();
    project.deploy("v2").assert_ok();
    assert_eq!(project.versions_served(), ["v2"; 2]);
    assert!(project.instances().iter().all(|i| i["health"] == "passing"), "{:?}", project.instances());
}

#[test]
fn ferry_puts_itself_on_a_host_once() {
    if !common::need::root() {
        return;
    }
    let fleet = SshFleet::start(1);
    let project = common::ssh_project(&fleet, &[("syd", &[0], 1)], "");
    project.deploy("v1").assert_ok();
    let listed = fleet.run_on(0, "ls ~/ferry/.bin");
    assert_eq!(listed.lines().count(), 1, "one executable, by its digest: {listed}");
    let before = fleet.run_on(0, "stat -c %Y ~/ferry/.bin/*");
    project.deploy("v2").assert_ok();
    assert_eq!(fleet.run_on(0, "stat -c %Y ~/ferry/.bin/*"), before, "not sent again");
}

#[test]
fn a_rebooted_host_brings_its_instances_back_on_the_current_version() {
    if !common::need::root_and_cron() {
        return;
    }
    let fleet = SshFleet::start(2);
    let project = common::ssh_project(&fleet, &[("syd", &[0], 1), ("lax", &[1], 1)], "");
    project.deploy("v1").assert_ok();
    project.deploy("v2").assert_ok();
    let ports: Vec<u16> = project.ports().into_iter().map(|(_, port)| port).collect();
    for i in 0..2 {
        let crontab = fleet.run_on(i, "crontab -l");
        let entry = crontab.lines().find_map(|l| l.strip_prefix("@reboot ")).expect("an @reboot entry");
        let command = entry.trim_end_matches("# ferry agent").trim();
        // A reboot: every process of the account goes.
        fleet.kill_all_user_processes(i);
        // What cron runs at boot, detached as cron's jobs are.
        let detached = format!("setsid sh -c {} < /dev/null > /dev/null 2>&1 &", shell_word(command));
        fleet.run_on(i, &detached);
    }
    // Asked directly, without a ferry command (which would start the agent itself).
    let deadline = Instant::now() + Duration::from_secs(20);
    for port in ports {
        while get(port, "/version").map(|(_, body)| body.trim().to_string()).as_deref() != Some("v2") {
            assert!(Instant::now() < deadline, "the instance on port {port} did not come back");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert_eq!(project.versions_served(), ["v2"; 2]);
}

/// A tmpfs mounted `noexec` for the test's length, unmounted when dropped.
struct NoexecMount(std::path::PathBuf);

impl NoexecMount {
    fn at(dir: std::path::PathBuf, owner: &str) -> NoexecMount {
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "noexec,size=256m", "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(mounted.success(), "mounting a noexec tmpfs at {}", dir.display());
        let mount = NoexecMount(dir);
        let chowned = std::process::Command::new("chown").arg(owner).arg(&mount.0).status().unwrap();
        assert!(chowned.success());
        mount
    }
}

impl Drop for NoexecMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("--lazy").arg(&self.0).status();
    }
}

#[test]
fn a_root_where_programs_may_not_run_is_refused_before_anything_changes() {
    if !common::need::root() {
        return;
    }
    let fleet = SshFleet::start(1);
    let host = &fleet.hosts()[0];
    let _mount = NoexecMount::at(host.home.join("noexec"), &host.user);
    let project = Project::builder()
        .ferry_keys("target = \"ssh\"\nroot = \"~/noexec/ferry\"")
        .env("FERRY_SSH_CONFIG", fleet.ssh_config().to_str().unwrap())
        .ssh_region("syd", &[host.spec()], 1)
        .build();
    let run = project.deploy("v1");
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("noexec") && run.stderr.contains("[ferry] root"), "{}", run.stderr);
    let left = fleet.run_on(0, "ls -A ~/noexec/ferry");
    assert_eq!(left.trim(), ".bin", "nothing but ferry's executable was written: {left}");
}

/// One word for a POSIX shell.
fn shell_word(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}
