//! The sshd test harness itself: hosts answer as their own users, and host keys are
//! checked strictly.

mod common;

use common::sshd::SshFleet;

fn root() -> bool {
    let out = std::process::Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

#[test]
fn hosts_run_commands_as_their_own_users_and_check_keys() {
    if !root() {
        eprintln!("not root; skipped");
        return;
    }
    let fleet = SshFleet::start(2);
    let users: Vec<String> = fleet.hosts().iter().map(|h| h.user.clone()).collect();
    for (i, host) in fleet.hosts().iter().enumerate() {
        let out = fleet.ssh(i, "id -un; echo $HOME");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.lines().collect::<Vec<_>>(), [host.user.as_str(), host.home.to_str().unwrap()]);
    }
    fleet.stop(1);
    assert!(!fleet.ssh(1, "true").status.success());
    fleet.start_again(1);
    assert!(fleet.ssh(1, "true").status.success());

    fleet.forget_host_key(0);
    let unknown = fleet.ssh(0, "true");
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("Host key verification failed"));
    fleet.rotate_host_key(1);
    let changed = fleet.ssh(1, "true");
    assert!(!changed.status.success());
    assert!(
        String::from_utf8_lossy(&changed.stderr).contains("IDENTIFICATION HAS CHANGED"),
        "{}",
        String::from_utf8_lossy(&changed.stderr)
    );

    drop(fleet);
    for user in users {
        assert!(!std::process::Command::new("id").arg(&user).output().unwrap().status.success(), "{user} was removed");
    }
}
