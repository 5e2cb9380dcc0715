//! Deploying to real `sshd` hosts on loopback, each with its own user, through the real
//! binary and the system OpenSSH client. Needs root (to create the hosts' users);
//! without it each test says so (see `common::need`).

mod common;

use common::sshd::SshFleet;
use common::{get, Project};

#[test]
fn deploy_rollout_revert_and_rollback_over_ssh() {
    if !common::need::root() {
        return;
    }
    let fleet = SshFleet::start(4);
    let project = common::ssh_project(&fleet, &[("syd", &[0, 1], 2), ("lax", &[2, 3], 2)], "");
    project.deploy("v1").assert_ok();
    project.deploy("v2").assert_ok();

    // Each host holds both releases, points `current` at v2 and runs one v2 instance.
    for i in 0..4 {
        let releases = fleet.run_on(i, "ls ~/ferry/hello/releases");
        assert_eq!(releases.split_whitespace().collect::<Vec<_>>(), ["v1", "v2"], "host {i}");
        assert_eq!(fleet.run_on(i, "readlink ~/ferry/hello/current").trim(), "releases/v2");
        let instances = fleet.run_on(i, "cat ~/ferry/hello/instances/*/instance.json");
        assert_eq!(instances.lines().count(), 1, "placement spreads instances over hosts: {instances}");
        assert!(instances.contains("\"version\":\"v2\""), "{instances}");
    }
    assert_eq!(project.versions_served(), ["v2"; 4]);
    assert!(project.instances().iter().all(|i| i["health"] == "passing"), "health through the ssh forward");

    // The same release again: nothing uploaded, nothing restarted.
    let again = project.ferry(&["deploy", "--version", "v2", "--json"]);
    again.assert_ok();
    let uploads: Vec<_> = again.events().into_iter().filter(|e| e["event"] == "upload").collect();
    assert!(uploads.iter().all(|u| u["bytes_sent"] == 0 && u["skipped"] == true), "{uploads:?}");

    // A release that fails its checks is reverted on every host.
    project.set_mode(Some("fail-health"));
    let bad = project.ferry(&["deploy", "--version", "v3", "--wait-timeout", "3s", "--json"]);
    assert_eq!(bad.code, 1, "{}", bad.stderr);
    assert_eq!(bad.finished()["outcome"], "reverted");
    assert_eq!(project.versions_served(), ["v2"; 4]);

    project.set_mode(None);
    project.ferry(&["rollback"]).assert_ok();
    assert_eq!(project.versions_served(), ["v1"; 4]);
    for i in 0..4 {
        assert_eq!(fleet.run_on(i, "readlink ~/ferry/hello/current").trim(), "releases/v1");
    }
}

#[test]
fn second_deploy_of_the_same_release_uploads_nothing_to_new_and_old_hosts_alike() {
    if !common::need::root() {
        return;
    }
    let fleet = SshFleet::start(2);
    let project = common::ssh_project(&fleet, &[("syd", &[0, 1], 2)], "");
    let first = project.ferry(&["deploy", "--version", "v1", "--json"]);
    first.assert_ok();
    let sent: u64 =
        first.events().iter().filter(|e| e["event"] == "upload").map(|e| e["bytes_sent"].as_u64().unwrap()).sum();
    assert!(sent > 100_000, "the first deploy uploads the release to both hosts ({sent} bytes)");
    let second = project.ferry(&["deploy", "--version", "v1", "--json"]);
    second.assert_ok();
    assert!(second.events().iter().filter(|e| e["event"] == "upload").all(|e| e["bytes_sent"] == 0));
}

#[test]
fn regions_add_remove_and_scale_over_ssh_keep_the_config_formatting() {
    if !common::need::root() {
        return;
    }
    let fleet = SshFleet::start(3);
    let project = common::ssh_project(&fleet, &[("syd", &[0, 1], 1)], "");
    let config = project.path().join("fly.toml");
    let commented =
        format!("# deploy config for hello\n{}\n# trailing note: keep me\n", std::fs::read_to_string(&config).unwrap());
    std::fs::write(&config, &commented).unwrap();
    project.deploy("v1").assert_ok();

    let lax = fleet.hosts()[2].spec();
    project.ferry(&["regions", "add", "lax", "--host", &lax, "--count", "1"]).assert_ok();
    let status = project.status();
    let regions: Vec<&str> =
        status["instances"].as_array().unwrap().iter().map(|i| i["region"].as_str().unwrap()).collect();
    assert_eq!(regions.iter().filter(|r| **r == "lax").count(), 1, "{regions:?}");
    assert_eq!(project.versions_served(), ["v1", "v1"]);
    let edited = std::fs::read_to_string(&config).unwrap();
    common::assert_lines_kept(&commented, &edited);

    let list = project.ferry(&["regions", "list"]);
    assert!(list.stdout.contains("lax"), "{}", list.stdout);

    project.ferry(&["scale", "count", "3", "--region", "syd"]).assert_ok();
    assert_eq!(project.instances().iter().filter(|i| i["region"] == "syd").count(), 3);
    let spread = fleet.run_on(0, "ls ~/ferry/hello/instances | wc -l").trim().parse::<u32>().unwrap()
        + fleet.run_on(1, "ls ~/ferry/hello/instances | wc -l").trim().parse::<u32>().unwrap();
    assert_eq!(spread, 3);
    let refused = project.ferry(&["scale", "count", "1", "--region", "syd"]);
    assert_eq!(refused.code, 2, "stopping instances needs --yes without a terminal: {}", refused.stderr);
    project.ferry(&["scale", "count", "1", "--region", "syd", "--yes"]).assert_ok();
    assert_eq!(project.instances().iter().filter(|i| i["region"] == "syd").count(), 1);

    let primary = project.ferry(&["regions", "remove", "syd", "--yes"]);
    assert_eq!(primary.code, 2, "{}", primary.stderr);
    project.ferry(&["regions", "remove", "lax", "--yes"]).assert_ok();
    assert!(project.instances().iter().all(|i| i["region"] == "syd"));
    assert!(fleet.run_on(2, "ls ~/ferry/hello/instances").trim().is_empty());
    let after = std::fs::read_to_string(&config).unwrap();
    assert!(!after.contains("[ferry.regions.lax]"));
    assert_eq!(after, commented, "scaling back and removing lax restores the file");
}

#[test]
fn unreachable_host_stops_the_deploy_before_any_change() {
    if !common::need::root() {
        return;
    }
    let fleet = SshFleet::start(2);
    let project = common::ssh_project(&fleet, &[("syd", &[0], 1), ("lax", &[1], 1)], "");
    project.deploy("v1").assert_ok();
    fleet.stop(1);
    let run = project.deploy("v2");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains(&fleet.hosts()[1].spec()), "names the host: {}", run.stderr);
    assert!(run.stderr.contains("nothing was changed"), "{}", run.stderr);
    assert_eq!(fleet.run_on(0, "ls ~/ferry/hello/releases").trim(), "v1", "nothing shipped anywhere");
    fleet.start_again(1);
    project.deploy("v2").assert_ok();
    assert_eq!(project.versions_served(), ["v2", "v2"]);
}

#[test]
fn other_region_that_cannot_take_the_release_halts_the_deploy_and_puts_the_primary_back() {
    if !common::need::root() {
        return;
    }
    let fleet = SshFleet::start(2);
    let project = common::ssh_project(&fleet, &[("syd", &[0], 1), ("lax", &[1], 1)], "");
    project.deploy("v1").assert_ok();
    // lax's host receives releases while syd rolls out; make it refuse this one.
    fleet.run_on(1, "chmod 555 ~/ferry/hello/releases");
    let run = project.ferry(&["deploy", "--version", "v2", "--json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let events = run.events();
    let primary_first = events.iter().position(|e| e["event"] == "release_installed").map(|i| &events[i]["host"]);
    assert_eq!(primary_first, Some(&serde_json::Value::from(fleet.hosts()[0].spec())), "the primary gets it first");
    assert_eq!(run.finished()["outcome"], "reverted", "{}", run.stderr);
    assert!(run.stderr.contains(&format!("shipping release v2 to `{}`", fleet.hosts()[1].spec())), "{}", run.stderr);
    assert!(run.stderr.contains("Permission denied"), "says why: {}", run.stderr);
    assert!(run.stderr.contains("put back on v1"), "says what was restored: {}", run.stderr);
    assert_eq!(project.versions_served(), ["v1", "v1"]);
    assert!(fleet.run_on(0, "readlink ~/ferry/hello/current").contains("v1"), "current stays v1 on syd");
    let locks = fleet.run_on(0, "ls ~/ferry/hello").contains("lock");
    assert!(!locks, "the lock is released");

    fleet.run_on(1, "chmod 755 ~/ferry/hello/releases");
    project.deploy("v2").assert_ok();
    assert_eq!(project.versions_served(), ["v2", "v2"]);
}

#[test]
fn primary_host_that_cannot_take_the_release_halts_its_region_and_puts_the_first_back() {
    if !common::need::root() {
        return;
    }
    let fleet = SshFleet::start(2);
    let project = common::ssh_project(&fleet, &[("syd", &[0, 1], 2)], "");
    project.deploy("v1").assert_ok();
    // The first batch's host gets the release first and rolls out while the second
    // host receives it; make the second refuse it.
    fleet.run_on(1, "chmod 555 ~/ferry/hello/releases");
    let run = project.ferry(&["deploy", "--version", "v2", "--json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains(&format!("shipping release v2 to `{}`", fleet.hosts()[1].spec())), "{}", run.stderr);
    assert!(run.stderr.contains("put back on v1"), "{}", run.stderr);
    assert_eq!(project.versions_served(), ["v1", "v1"]);
    fleet.run_on(1, "chmod 755 ~/ferry/hello/releases");
    project.deploy("v2").assert_ok();
    assert_eq!(project.versions_served(), ["v2", "v2"]);
}

#[test]
fn host_lost_mid_rollout_halts_and_reverts_then_rerun_converges() {
    if !common::need::root() {
        return;
    }
    let fleet = SshFleet::start(2);
    let project = common::ssh_project(&fleet, &[("syd", &[0], 1), ("lax", &[1], 1)], "");
    project.deploy("v1").assert_ok();
    project.set_mode(Some("slow-start=1500"));
    let mut child = project.spawn(&["deploy", "--version", "v2", "--json", "--wait-timeout", "20s"]);
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    // Lose lax's host while its instance is starting.
    common::wait_for_event(&mut stdout, |e| e["event"] == "instance_updating" && e["region"] == "lax")
        .expect("lax started");
    fleet.stop(1);
    let rest: Vec<serde_json::Value> =
        std::io::BufRead::lines(stdout).map_while(Result::ok).filter_map(|l| serde_json::from_str(&l).ok()).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let finished = rest.iter().find(|e| e["event"] == "finished").expect("finished event");
    assert_eq!(finished["outcome"], "failed", "lax could not be reverted while unreachable: {finished}");
    assert!(rest.iter().any(|e| e["event"] == "instance_revert_failed" && e["region"] == "lax"), "{rest:?}");
    assert!(
        rest.iter().any(|e| e["event"] == "instance_reverted" && e["region"] == "syd"),
        "syd was put back: {rest:?}"
    );
    let syd_port = project_port(&fleet, 0);
    assert_eq!(get(syd_port, "/version").unwrap().1.trim(), "v1");

    // The same v2 (a rebuilt v2 with other contents would be refused as a different
    // release under a used version).
    fleet.start_again(1);
    project.deploy("v2").assert_ok();
    assert_eq!(project.versions_served(), ["v2", "v2"]);
}

fn project_port(fleet: &SshFleet, i: usize) -> u16 {
    let json = fleet.run_on(i, "cat ~/ferry/hello/instances/*/instance.json");
    let value: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    u16::try_from(value["port"].as_u64().unwrap()).unwrap()
}

#[test]
fn unknown_and_changed_host_keys_are_refused() {
    if !common::need::root() {
        return;
    }
    let fleet = SshFleet::start(2);
    let project = common::ssh_project(&fleet, &[("syd", &[0], 1), ("lax", &[1], 1)], "");
    fleet.forget_host_key(0);
    let unknown = project.deploy("v1");
    assert_eq!(unknown.code, 1, "{}", unknown.stderr);
    assert!(unknown.stderr.contains("not in known_hosts"), "{}", unknown.stderr);
    assert!(unknown.stderr.contains("--accept-new-host-keys"), "the hint says how to trust it: {}", unknown.stderr);
    assert!(!project.path().join(".ferry/local").exists());

    project.ferry(&["deploy", "--version", "v1", "--accept-new-host-keys"]).assert_ok();

    fleet.rotate_host_key(1);
    let changed = project.ferry(&["deploy", "--version", "v2", "--accept-new-host-keys"]);
    assert_eq!(changed.code, 1, "{}", changed.stderr);
    assert!(changed.stderr.contains("CHANGED"), "{}", changed.stderr);
    let port = project_port(&fleet, 0);
    assert_eq!(get(port, "/version").unwrap().1.trim(), "v1", "the reachable host was not changed either");
}

#[test]
fn hostile_strings_reach_the_host_literally() {
    if !common::need::root() {
        return;
    }
    let fleet = SshFleet::start(1);
    let hostile = r#"it's "q" $(touch /tmp/ferry-pwned) `id`; echo x"#;
    let project = Project::builder()
        .ferry_keys("target = \"ssh\"\nroot = \"~/dir with 'q' $(x) `y`; z/ferry\"")
        .env("FERRY_SSH_CONFIG", fleet.ssh_config().to_str().unwrap())
        .toml(&format!("[env]\n  HOSTILE = {}", common::toml_string(hostile)))
        .start(Some("printf '%s' \"$HOSTILE\" > hostile.out; exec bin/hello"))
        .ssh_region("syd", &[fleet.hosts()[0].spec()], 1)
        .build();
    project.deploy("v1+build.1").assert_ok();
    let dir = "~/\"dir with 'q' \\$(x) \\`y\\`; z/ferry/hello\"";
    // The instance writes into its own directory; the release stays as shipped.
    let got = fleet.run_on(0, &format!("cat {dir}/instances/*/root/hostile.out"));
    assert_eq!(got, hostile);
    let release = fleet.run_on(0, &format!("ls -A {dir}/releases/v1+build.1"));
    assert!(!release.contains("hostile.out"), "{release}");
    assert!(!std::path::Path::new("/tmp/ferry-pwned").exists());
    assert_eq!(project.versions_served(), ["v1+build.1"]);
}

#[test]
fn volumes_bind_instances_on_ssh_hosts_and_keep_their_data() {
    if !common::need::root() {
        return;
    }
    let fleet = SshFleet::start(2);
    let project = Project::builder()
        .ferry_keys("target = \"ssh\"")
        .env("FERRY_SSH_CONFIG", fleet.ssh_config().to_str().unwrap())
        .toml("[[mounts]]\n  source = \"data\"\n  destination = \"/data\"")
        .start(Some("echo \"$RELEASE_VERSION\" >> \"$FERRY_VOLUME_DATA/boots\"; exec bin/hello"))
        .ssh_region("syd", &[fleet.hosts()[0].spec(), fleet.hosts()[1].spec()], 1)
        .build();
    let refused = project.deploy("v1");
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(refused.stderr.contains("ferry volumes create data --region syd --size 1 --host "), "{}", refused.stderr);

    // The volume goes on the second host; the instance must follow it there.
    let second = fleet.hosts()[1].spec();
    project.ferry(&["volumes", "create", "data", "--region", "syd", "--size", "1", "--host", &second]).assert_ok();
    project.deploy("v1").assert_ok();
    project.deploy("v2").assert_ok();
    assert_eq!(project.instances()[0]["host"], second.as_str());
    let boots = fleet.run_on(1, "cat ~/ferry/hello/volumes/*/data/boots");
    assert_eq!(boots, "v1\nv2\n");
    assert!(fleet.run_on(0, "ls ~/ferry/hello/instances").trim().is_empty());
}

#[test]
fn a_long_tmpdir_leaves_ssh_control_sockets_short() {
    if !common::need::root() {
        return;
    }
    let fleet = SshFleet::start(1);
    let project = common::ssh_project(&fleet, &[("syd", &[0], 1)], "");
    // Far past what a socket path may hold once ssh adds its own names.
    let deep = project.path().join("a-temporary-directory-with-a-long-name".repeat(3));
    std::fs::create_dir_all(&deep).unwrap();
    for (version, persist) in [("v1", "1"), ("v2", "0")] {
        let out = project
            .command(&["deploy", "--version", version])
            .env("TMPDIR", &deep)
            .env("FERRY_SSH_PERSIST", persist)
            .output()
            .unwrap();
        assert!(out.status.success(), "FERRY_SSH_PERSIST={persist}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(std::fs::read_dir(&deep).unwrap().count(), 0, "nothing of ssh's was put under TMPDIR");
}

#[test]
fn exec_and_console_run_on_the_instance_s_host_in_its_environment() {
    if !common::need::root() {
        return;
    }
    let fleet = SshFleet::start(1);
    let project = common::ssh_project(&fleet, &[("syd", &[0], 1)], "");
    project.deploy("v1").assert_ok();
    project.set_secret("API_KEY", b"hunter2").assert_ok();
    let id = project.instances()[0]["id"].as_str().unwrap().to_string();

    // The host's own account, home and instance directory, and what the instance got.
    let run = project.ferry(&["exec", "--", "echo $(id -un) $FLY_REGION $API_KEY $FERRY_INSTANCE_ID; pwd; exit 5"]);
    assert_eq!(run.code, 5, "the command's exit code: {}", run.stderr);
    let user = fleet.run_on(0, "id -un");
    let first = format!("{} syd hunter2 {id}", user.trim());
    assert_eq!(run.stdout.lines().next(), Some(first.as_str()), "{}", run.stdout);
    assert!(run.stdout.contains(&format!("ferry/hello/instances/{id}/root")), "{}", run.stdout);

    let console = project.with_stdin(&["console"], b"echo \"on $FLY_REGION\"\n");
    assert_eq!((console.code, console.stdout.as_str()), (0, "on syd\n"), "{}", console.stderr);
}

#[test]
fn doctor_checks_each_host_and_says_what_to_fix() {
    if !common::need::root() {
        return;
    }
    let mut fleet = SshFleet::start(3);
    let project = common::ssh_project(&fleet, &[("syd", &[0, 1], 1), ("lax", &[2], 1)], "");
    let healthy = project.ferry(&["doctor", "--json"]);
    healthy.assert_ok();
    let rows = healthy.rows();
    for check in ["connection", "tools", "disk", "clock", "agent", "forwarding"] {
        let of: Vec<_> = rows.iter().filter(|r| r["check"] == check).collect();
        assert_eq!(of.len(), 3, "{check} on every host: {rows:?}");
        assert!(of.iter().all(|r| r["status"] == "ok"), "{of:?}");
    }

    fleet.forbid_forwarding(1);
    fleet.stop(2);
    let run = project.ferry(&["doctor"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let lax = fleet.hosts()[2].spec();
    let syd2 = fleet.hosts()[1].spec();
    assert!(run.stdout.contains(&format!("{lax} connection (fail): check that the host is up")), "{}", run.stdout);
    assert!(run.stdout.contains(&format!("{syd2} forwarding (warn): allow it")), "{}", run.stdout);
    assert!(run.stderr.contains("1 check(s) failed"), "{}", run.stderr);
}
