//! The deploy loop on the local target, through the real binary and real processes.

mod common;

use std::collections::BTreeMap;
use std::io::BufReader;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{get, wait_for_event, Project};

#[test]
fn deploy_v1_then_v2_serves_v2_everywhere_and_never_takes_a_region_down() {
    // Without a front door (its own tests are in front_door.rs), instances are replaced
    // in place, one per region at a time, and keep their ports.
    let project = Project::builder().region("syd", 2).region("lax", 2).proxy("  enabled = false").build();
    project.deploy("v1").assert_ok();
    assert_eq!(project.versions_served(), ["v1"; 4]);
    let ports = project.ports();

    // Make each new instance take a while to come up, so the sampler sees the rollout.
    project.set_mode(Some("slow-start=300"));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = Arc::clone(&done);
        let ports = ports.clone();
        std::thread::spawn(move || {
            let mut samples = 0;
            let mut outages = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let mut up: BTreeMap<&str, usize> = BTreeMap::new();
                for (region, port) in &ports {
                    let healthy = get(*port, "/health").is_some_and(|(status, _)| status == 200);
                    *up.entry(region.as_str()).or_default() += usize::from(healthy);
                }
                outages.extend(up.iter().filter(|(_, n)| **n == 0).map(|(r, _)| (*r).to_string()));
                samples += 1;
            }
            (samples, outages)
        })
    };
    let run = project.deploy("v2");
    done.store(true, Ordering::SeqCst);
    run.assert_ok();
    let (sample_count, outages) = sampler.join().unwrap();
    assert!(sample_count > 5, "sampled only {sample_count} times");
    assert!(outages.is_empty(), "regions fully down during the rollout: {outages:?}");
    assert_eq!(project.versions_served(), ["v2"; 4]);
    assert_eq!(project.ports(), ports, "instances keep their ports across versions");
}

#[test]
fn failing_release_is_reverted_everywhere_and_recorded() {
    let project = Project::two_by_two();
    project.deploy("v1").assert_ok();
    project.deploy("v2").assert_ok();
    project.set_mode(Some("fail-health"));
    let run = project.ferry(&["deploy", "--version", "v3", "--wait-timeout", "7s"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("failed on v3"), "{}", run.stderr);
    // A wait that is not short says how long it has waited, of how long, and why.
    let waiting = run.stderr.lines().find(|l| l.contains(" waiting on local/syd, ")).expect(&run.stderr);
    assert!(waiting.contains("[0/2]") && waiting.contains(" of 7s: "), "{waiting}");
    assert!(waiting.contains("GET /health answered 503"), "{waiting}");
    assert!(run.stderr.contains("503"), "the reason names the failing check: {}", run.stderr);
    assert!(run.stderr.contains("hello v3 listening"), "the instance's log lines are shown: {}", run.stderr);
    assert!(run.stderr.contains("put back on v2"), "{}", run.stderr);
    assert_eq!(project.versions_served(), ["v2"; 4]);
    let releases = project.releases();
    assert_eq!(releases[0]["version"], "v3");
    assert_eq!(releases[0]["status"], "reverted");
    assert_eq!(releases[1]["status"], "complete");
}

#[test]
fn instance_exiting_at_start_fails_fast_not_at_the_deadline() {
    let project = Project::two_by_two();
    project.deploy("v1").assert_ok();
    project.set_mode(Some("exit-at-start"));
    let run = project.ferry(&["deploy", "--version", "v2", "--wait-timeout", "10m", "--json"]);
    assert_eq!(run.code, 1);
    let failed = run.events().into_iter().find(|e| e["event"] == "instance_failed").expect("an instance_failed event");
    assert!(failed["reason"].as_str().unwrap().contains("exited before it became healthy"), "{failed}");
    assert!(
        failed["log"].as_array().unwrap().iter().any(|l| l.as_str().unwrap().contains("exiting at start")),
        "{failed}"
    );
    assert_eq!(run.finished()["outcome"], "reverted");
    assert_eq!(project.versions_served(), ["v1"; 4]);
}

/// A project whose v2 cannot start in lax (only there), so syd succeeds first.
fn v2_fails_only_in_lax() -> Project {
    Project::builder()
        .region("syd", 1)
        .region("lax", 1)
        .start(Some(
            r#"if [ "$FLY_REGION-$RELEASE_VERSION" = lax-v2 ]; then echo "no v2 in lax"; exit 1; fi; exec bin/hello"#,
        ))
        .build()
}

#[test]
fn failure_in_another_region_reverts_the_primary_too() {
    let project = v2_fails_only_in_lax();
    project.deploy("v1").assert_ok();
    let run = project.ferry(&["deploy", "--version", "v2", "--json"]);
    assert_eq!(run.code, 1);
    assert_eq!(run.finished()["outcome"], "reverted");
    let reverted: Vec<_> = run.events().into_iter().filter(|e| e["event"] == "instance_reverted").collect();
    assert_eq!(reverted.len(), 2, "the failing lax instance and the updated syd instance");
    assert_eq!(project.versions_served(), ["v1", "v1"]);
}

#[test]
fn no_revert_leaves_updated_instances_on_the_new_version() {
    let project = v2_fails_only_in_lax();
    project.deploy("v1").assert_ok();
    let run = project.ferry(&["deploy", "--version", "v2", "--no-revert", "--json"]);
    assert_eq!(run.code, 1);
    assert_eq!(run.finished()["outcome"], "failed");
    assert!(run.stderr.contains("left on v2"), "{}", run.stderr);
    // syd keeps v2; the failing lax instance itself always gets v1 back.
    assert_eq!(project.versions_served(), ["v2", "v1"]);
}

#[test]
fn rollback_returns_to_the_previous_release() {
    let project = Project::two_by_two();
    project.deploy("v1").assert_ok();
    project.deploy("v2").assert_ok();
    project.ferry(&["rollback"]).assert_ok();
    assert_eq!(project.versions_served(), ["v1"; 4]);
    let releases = project.releases();
    assert_eq!(releases[0]["kind"], "rollback");
    assert_eq!(releases[0]["version"], "v1");
    assert_eq!(releases[1]["version"], "v2");
    assert_eq!(releases[1]["status"], "rolled back");
}

#[test]
fn rollback_to_a_pruned_release_is_refused_with_the_list() {
    let project = Project::builder().region("syd", 1).ferry_keys("keep_releases = 2").build();
    for version in ["v1", "v2", "v3", "v4"] {
        project.deploy(version).assert_ok();
    }
    let run = project.ferry(&["rollback", "v1"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("v4, v3"), "lists the releases still there, newest first: {}", run.stderr);
    assert_eq!(project.versions_served(), ["v4"]);
    project.ferry(&["rollback", "v3"]).assert_ok();
    assert_eq!(project.versions_served(), ["v3"]);
}

#[test]
fn pruning_keeps_the_release_a_rollback_goes_back_to() {
    let project = Project::builder().region("syd", 2).ferry_keys("keep_releases = 2").build();
    let deploy = |version: &str| -> Vec<String> {
        let run = project.ferry(&["deploy", "--version", version, "--json"]);
        run.assert_ok();
        run.events()
            .iter()
            .filter(|e| e["event"] == "pruned")
            .map(|e| e["version"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(deploy("v1").is_empty());
    assert!(deploy("v2").is_empty());
    assert_eq!(deploy("v3"), ["v1"], "beyond the newest two, on the one local host");
    project.ferry(&["rollback"]).assert_ok();
    assert_eq!(project.versions_served(), ["v2", "v2"]);
    // v2 is now the oldest of three, but it is what a rollback from v4 goes back to.
    assert!(deploy("v4").is_empty(), "nothing pruned");
    project.ferry(&["rollback"]).assert_ok();
    assert_eq!(project.versions_served(), ["v2", "v2"]);
}

#[test]
fn deploying_the_running_version_again_changes_nothing() {
    let project = Project::builder().region("syd", 2).build();
    project.deploy("v1").assert_ok();
    let before: Vec<u64> = project.instances().iter().map(|i| i["pid"].as_u64().unwrap()).collect();
    let run = project.ferry(&["deploy", "--version", "v1", "--json"]);
    run.assert_ok();
    assert!(run.finished()["message"].as_str().unwrap().contains("nothing changed"), "{}", run.stdout);
    let after: Vec<u64> = project.instances().iter().map(|i| i["pid"].as_u64().unwrap()).collect();
    assert_eq!(before, after);
    assert_eq!(project.releases().len(), 1);
}

#[test]
fn dry_run_prints_the_plan_and_touches_nothing() {
    let project = Project::two_by_two();
    let run = project.ferry(&["deploy", "--version", "v1", "--dry-run", "--json"]);
    run.assert_ok();
    let events = run.events();
    let instances = events.iter().filter(|e| e["event"] == "plan" && e["phase"] == "instance").count();
    assert_eq!(instances, 4);
    let ships = events.iter().filter(|e| e["event"] == "plan" && e["phase"] == "ship").count();
    assert_eq!(ships, 2, "every host's upload is planned: {}", run.stdout);
    assert!(events.iter().any(|e| e["event"] == "plan" && e["phase"] == "finish"), "{}", run.stdout);
    assert!(!project.path().join(".ferry/local").exists());
    assert!(!project.path().join(".ferry/build").exists());
}

#[test]
fn deploy_killed_mid_rollout_converges_when_run_again() {
    let project = Project::two_by_two();
    project.deploy("v1").assert_ok();
    project.set_mode(Some("slow-start=400"));
    let mut child = project.spawn(&["deploy", "--version", "v2", "--json"]);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    // Kill it after the first instance is healthy, while the second is starting.
    wait_for_event(&mut stdout, |e| e["event"] == "instance_healthy").expect("one instance became healthy");
    wait_for_event(&mut stdout, |e| e["event"] == "instance_updating").expect("the next instance started");
    child.kill().unwrap();
    child.wait().unwrap();

    let run = project.ferry(&["deploy", "--version", "v2", "--json"]);
    run.assert_ok();
    assert!(
        run.events().iter().any(|e| e["event"] == "lock_taken_over"),
        "the dead deploy's lock is taken over: {}",
        run.stdout
    );
    assert_eq!(project.versions_served(), ["v2"; 4]);
    assert!(project.instances().iter().all(|i| i["health"] == "passing"));
}

#[test]
fn second_concurrent_deploy_is_refused_naming_the_holder() {
    let project = Project::builder().region("syd", 2).build();
    project.deploy("v1").assert_ok();
    project.set_mode(Some("slow-start=1500"));
    let mut child = project.spawn(&["deploy", "--version", "v2", "--json"]);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    wait_for_event(&mut stdout, |e| e["event"] == "deploy_started").expect("first deploy started");
    let run = project.ferry(&["deploy", "--version", "v3"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("is locked by"), "{}", run.stderr);
    assert!(run.stderr.contains(&format!("pid {}", child.id())), "names the holder's pid: {}", run.stderr);
    assert!(run.stderr.contains("`deploy`"), "names the holder's command: {}", run.stderr);
    assert!(child.wait().unwrap().success());
    assert_eq!(project.versions_served(), ["v2"; 2]);
}

#[test]
fn lock_wait_waits_for_the_holder_to_finish() {
    let project = Project::builder().region("syd", 1).build();
    project.set_mode(Some("slow-start=800"));
    let mut child = project.spawn(&["deploy", "--version", "v1", "--json"]);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    wait_for_event(&mut stdout, |e| e["event"] == "deploy_started").expect("first deploy started");
    project.set_mode(None);
    project.ferry(&["deploy", "--version", "v2", "--lock-wait", "2m"]).assert_ok();
    assert!(child.wait().unwrap().success());
    assert_eq!(project.versions_served(), ["v2"]);
}

#[test]
fn canary_and_immediate_strategies_deploy() {
    let project = Project::builder().region("syd", 3).build();
    project.deploy("v1").assert_ok();
    project.ferry(&["deploy", "--version", "v2", "--strategy", "canary"]).assert_ok();
    assert_eq!(project.versions_served(), ["v2"; 3]);
    project.ferry(&["deploy", "--version", "v3", "--strategy", "immediate"]).assert_ok();
    assert_eq!(project.versions_served(), ["v3"; 3]);
}

#[test]
fn bluegreen_without_a_front_door_is_refused_clearly() {
    let project = Project::builder().region("syd", 1).proxy("  enabled = false").build();
    let run = project.ferry(&["deploy", "--version", "v1", "--strategy", "bluegreen"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("bluegreen") && run.stderr.contains("no front door"), "{}", run.stderr);
    assert!(!project.path().join(".ferry/local").exists());
}

#[test]
fn the_dry_run_shows_the_front_doors_and_how_each_instance_is_replaced() {
    let project = Project::builder().region("syd", 2).build();
    project.deploy("v1").assert_ok();
    let run = project.ferry(&["deploy", "--version", "v2", "--strategy", "bluegreen", "--dry-run"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let text = format!("{}{}", run.stdout, run.stderr);
    assert!(text.contains(&format!("door    local/syd: 127.0.0.1:{} (http)", project.port)), "{text}");
    assert!(text.contains("beside the old one; the region switches at once when all are ready"), "{text}");
    let run = project.ferry(&["deploy", "--version", "v2", "--strategy", "immediate", "--dry-run"]);
    let text = format!("{}{}", run.stdout, run.stderr);
    assert!(text.contains("stop, then start (the strategy is `immediate`)"), "{text}");
}

#[test]
fn instances_get_the_documented_environment() {
    let project = Project::builder()
        .region("syd", 1)
        .region("lax", 1)
        .toml("[env]\n  GREETING = \"it's $(not) `run`; ok\"\n  NUMBER = 42\n  PORT = 1")
        .start(Some("env > env.out; exec bin/hello"))
        .build();
    project.deploy("v1").assert_ok();
    let envs: Vec<String> = glob_files(&project.path().join(".ferry/local"), "env.out");
    assert_eq!(envs.len(), 2, "{envs:?}");
    for text in envs {
        for key in [
            "FLY_APP_NAME=hello",
            "PRIMARY_REGION=syd",
            "RELEASE_VERSION=v1",
            "NUMBER=42",
            "GREETING=it's $(not) `run`; ok",
        ] {
            assert!(text.lines().any(|l| l == key), "missing {key} in:\n{text}");
        }
        for key in ["FLY_REGION=", "FERRY_INSTANCE_ID=", "PORT="] {
            assert!(text.lines().any(|l| l.starts_with(key)), "missing {key}");
        }
        assert!(!text.lines().any(|l| l == "PORT=1"), "ferry's PORT wins over [env]");
    }
}

fn glob_files(dir: &std::path::Path, name: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && !path.is_symlink() {
            found.extend(glob_files(&path, name));
        } else if path.file_name().is_some_and(|n| n == name) {
            found.push(std::fs::read_to_string(&path).unwrap());
        }
    }
    found
}

#[test]
fn status_releases_and_logs_describe_the_app() {
    let project = Project::two_by_two();
    project.deploy("v1").assert_ok();
    let status = project.status();
    assert_eq!(status["current_version"], "v1");
    let instances = status["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 4);
    for instance in instances {
        assert_eq!(instance["state"], "running");
        assert_eq!(instance["health"], "passing");
        assert!(instance["pid"].as_u64().unwrap() > 0);
    }
    let human = project.ferry(&["status"]);
    assert!(human.stdout.contains("current version v1"), "{}", human.stdout);
    let logs = project.ferry(&["logs", "-r", "lax", "-n", "5"]);
    logs.assert_ok();
    assert!(logs.stdout.lines().all(|l| l.starts_with("lax/")), "{}", logs.stdout);
    assert!(logs.stdout.contains("listening"), "{}", logs.stdout);
    let releases = project.ferry(&["releases"]);
    assert!(releases.stdout.contains("v1") && releases.stdout.contains("complete"), "{}", releases.stdout);
}

#[test]
fn destroy_stops_every_instance_and_removes_state() {
    let project = Project::builder().region("syd", 2).build();
    project.deploy("v1").assert_ok();
    let ports = project.ports();
    let refused = project.ferry(&["destroy"]);
    assert_eq!(refused.code, 2);
    project.ferry(&["destroy", "--yes"]).assert_ok();
    for (_, port) in ports {
        assert!(get(port, "/health").is_none(), "port {port} still answers");
    }
    assert!(!project.path().join(".ferry/local").exists());
}

#[test]
fn release_command_runs_once_before_instances_change() {
    let project = Project::builder()
        .region("syd", 2)
        .region("lax", 1)
        .deploy_keys("  release_command = \"echo migrated-$RELEASE_VERSION-$RELEASE_COMMAND >> {dir}/migrations.log\"")
        .build();
    let run = project.ferry(&["deploy", "--version", "v1", "--json"]);
    run.assert_ok();
    let events = run.events();
    let finished = events.iter().position(|e| e["event"] == "release_command_finished").expect("release_command ran");
    let first_update = events.iter().position(|e| e["event"] == "instance_updating").unwrap();
    assert!(finished < first_update, "release_command finished before any instance changed");
    let log = std::fs::read_to_string(project.path().join("migrations.log")).unwrap();
    assert_eq!(log, "migrated-v1-1\n");
}

#[test]
fn failing_release_command_changes_no_instance() {
    let project = Project::builder().region("syd", 2).build();
    project.deploy("v1").assert_ok();
    std::fs::write(
        project.path().join("fly.toml"),
        std::fs::read_to_string(project.path().join("fly.toml"))
            .unwrap()
            .replace("[deploy]\n", "[deploy]\n  release_command = \"echo boom; exit 3\"\n"),
    )
    .unwrap();
    let run = project.deploy("v2");
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("exited with 3"), "{}", run.stderr);
    assert!(run.stderr.contains("boom"), "{}", run.stderr);
    assert_eq!(project.versions_served(), ["v1"; 2]);
    assert_eq!(project.releases()[0]["status"], "failed");
}

#[test]
fn failing_release_command_shows_its_last_lines_even_with_json() {
    let project = Project::builder()
        .region("syd", 1)
        .deploy_keys("  release_command = \"echo step one; echo step two >&2; exit 4\"")
        .build();
    let run = project.ferry(&["deploy", "--version", "v1", "--json"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("| step one") && run.stderr.contains("| step two"), "{}", run.stderr);
    let lines: Vec<_> = run.events().into_iter().filter(|e| e["event"] == "release_command_output").collect();
    assert_eq!(lines.len(), 2, "streamed as events too");
}

/// Processes of this project whose command line is exactly `words`.
fn processes(project: &Project, words: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'));
        if String::from_utf8_lossy(&cmdline).replace('\0', " ").trim() == words
            && cwd.starts_with(project.path())
            && !zombie
        {
            found.push(pid);
        }
    }
    found
}

#[test]
fn stopping_an_instance_stops_every_process_it_started() {
    // The app exits on SIGTERM at once, but leaves a helper that ignores it: the stop
    // must wait for the whole process group and kill what is left after kill_timeout.
    let project =
        Project::builder().region("syd", 1).start(Some("(trap '' TERM; exec sleep 1000) & exec bin/hello")).build();
    std::fs::write(
        project.path().join("fly.toml"),
        std::fs::read_to_string(project.path().join("fly.toml"))
            .unwrap()
            .replace("kill_timeout = 5", "kill_timeout = 1"),
    )
    .unwrap();
    project.deploy("v1").assert_ok();
    assert_eq!(processes(&project, "sleep 1000").len(), 1);
    project.deploy("v2").assert_ok();
    assert_eq!(processes(&project, "sleep 1000").len(), 1, "v1's helper is gone, v2's runs");
    project.ferry(&["destroy", "--yes"]).assert_ok();
    assert!(processes(&project, "sleep 1000").is_empty());
}

#[test]
fn a_release_of_compressed_files_ships_as_plain_tar_and_arrives_intact() {
    // Random bytes do not deflate: the hosts get the tar stream, not the archive.
    let project = Project::builder().region("syd", 1).region("lax", 1).build();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<u8> = (0..8 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect();
    std::fs::write(project.path().join("rel/noise.bin"), &noise).unwrap();
    let run = project.ferry(&["deploy", "--version", "v1", "--json"]);
    run.assert_ok();
    let uploads: Vec<_> = run.events().into_iter().filter(|e| e["event"] == "upload").collect();
    let sent: Vec<u64> = uploads.iter().map(|u| u["bytes_sent"].as_u64().unwrap()).collect();
    assert_eq!(sent.iter().filter(|b| **b > 0).count(), 1, "one region unpacks, the other links: {uploads:?}");
    let archive = std::fs::metadata(project.path().join(".ferry/build/hello-v1.tar.gz")).unwrap().len();
    let shipped = sent.iter().copied().max().unwrap();
    assert!(shipped > archive, "the plain tar stream ({shipped} bytes) is longer than the archive ({archive})");
    for region in ["syd", "lax"] {
        let copy = project.path().join(format!(".ferry/local/{region}/local/hello/releases/v1/noise.bin"));
        assert!(std::fs::read(&copy).unwrap() == noise, "{region} has the file as built");
    }
    let leftovers: Vec<_> = std::fs::read_dir(project.path().join(".ferry/build"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tar"))
        .collect();
    assert!(leftovers.is_empty(), "the temporary tar stream is removed: {leftovers:?}");
    assert_eq!(project.versions_served(), ["v1", "v1"]);
}

/// A project whose replacements stop the old instance first (no front door to switch),
/// so a revert has to start the old release again rather than keep it serving.
fn in_place(count: u32) -> Project {
    Project::builder().region("syd", count).proxy("  enabled = false").build()
}

fn assert_put_back_on_v1(project: &Project, run: &common::Run) {
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("put back on v1"), "{}", run.stderr);
    let events = run.events();
    assert!(!events.iter().any(|e| e["event"] == "instance_revert_failed"), "every revert worked: {}", run.stdout);
    assert!(project.versions_served().iter().all(|v| v == "v1"), "{:?}", project.versions_served());
    assert!(project.instances().iter().all(|i| i["health"] == "passing"), "{:?}", project.instances());
}

#[test]
fn a_killed_bad_deploy_is_reverted_by_its_rerun() {
    let project = in_place(2);
    project.deploy("v1").assert_ok();
    project.set_mode(Some("fail-health"));
    let mut child = project.spawn(&["deploy", "--version", "v2", "--json", "--wait-timeout", "60s"]);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    wait_for_event(&mut stdout, |e| e["event"] == "instance_updating").expect("an instance is being replaced");
    // Killed once the instance's own record says v2 (it was started, it is failing).
    common::eventually(std::time::Duration::from_secs(20), || {
        project.instances().iter().any(|i| i["version"] == "v2").then_some(())
    });
    child.kill().unwrap();
    child.wait().unwrap();

    let run = project.ferry(&["deploy", "--version", "v2", "--json", "--wait-timeout", "3s"]);
    assert_put_back_on_v1(&project, &run);
    assert_eq!(project.versions_served(), ["v1"; 2]);
}

#[test]
fn a_killed_bad_first_deploy_leaves_nothing_on_the_bad_release_after_its_rerun() {
    let project = in_place(1);
    project.set_mode(Some("fail-health"));
    let mut child = project.spawn(&["deploy", "--version", "v1", "--json", "--wait-timeout", "60s"]);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    wait_for_event(&mut stdout, |e| e["event"] == "instance_updating").expect("an instance is being started");
    common::eventually(std::time::Duration::from_secs(20), || (!project.instances().is_empty()).then_some(()));
    child.kill().unwrap();
    child.wait().unwrap();

    let run = project.ferry(&["deploy", "--version", "v1", "--json", "--wait-timeout", "3s"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(!run.events().iter().any(|e| e["event"] == "instance_revert_failed"), "{}", run.stdout);
    assert!(project.instances().is_empty(), "nothing runs the bad release: {:?}", project.instances());
}

#[test]
fn a_revert_starts_the_old_release_with_its_own_env_and_command_not_the_new_ones() {
    let env = |toml: String| format!("{toml}\n[env]\n  HELLO_MODE = \"exit-at-start\"\n");
    let command = |toml: String| {
        toml.replace("start = \"exec bin/hello\"", "start = \"HELLO_MODE=exit-at-start exec bin/hello\"")
    };
    let cases: [(Project, &dyn Fn(String) -> String); 3] = [
        (in_place(2), &env),
        (Project::builder().region("syd", 2).build(), &env),
        (
            Project::builder().region("syd", 2).proxy("  enabled = false").start(Some("exec bin/hello")).build(),
            &command,
        ),
    ];
    for (project, edit) in cases {
        project.deploy("v1").assert_ok();
        // The new config makes every start of any release fail.
        let toml = std::fs::read_to_string(project.path().join("fly.toml")).unwrap();
        let changed = edit(toml.clone());
        assert_ne!(changed, toml);
        std::fs::write(project.path().join("fly.toml"), changed).unwrap();
        let run = project.ferry(&["deploy", "--version", "v2", "--json", "--wait-timeout", "3s"]);
        assert_put_back_on_v1(&project, &run);
    }
}

#[test]
fn a_secret_that_breaks_the_restart_is_undone() {
    for project in [in_place(2), Project::builder().region("syd", 2).build()] {
        project.deploy("v1").assert_ok();
        let run = project.set_secret("HELLO_MODE", b"exit-at-start");
        assert_put_back_on_v1(&project, &run);
        assert!(run.stdout.contains("previous secrets"), "says the change was undone: {}", run.stdout);
        let list = project.ferry(&["secrets", "list"]);
        assert!(!list.stdout.contains("HELLO_MODE"), "the bad secret is not kept: {}", list.stdout);
        project.deploy("v2").assert_ok();
        assert_eq!(project.versions_served(), ["v2"; 2]);
    }
}

#[test]
fn kill_timeout_is_wall_clock_time_per_instance() {
    // Each instance leaves a helper that ignores SIGTERM: its stop takes kill_timeout,
    // then SIGKILL, and no more.
    let project =
        Project::builder().region("syd", 3).start(Some("(trap '' TERM; exec sleep 1000) & exec bin/hello")).build();
    let toml = std::fs::read_to_string(project.path().join("fly.toml")).unwrap();
    std::fs::write(project.path().join("fly.toml"), toml.replace("kill_timeout = 5", "kill_timeout = 2")).unwrap();
    project.deploy("v1").assert_ok();
    let mut child = project.spawn(&["destroy", "--yes", "--json"]);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut at = Vec::new();
    while wait_for_event(&mut stdout, |e| e["event"] == "instance_stopped").is_some() {
        at.push(std::time::Instant::now());
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(at.len(), 3);
    for pair in at.windows(2) {
        let took = pair[1] - pair[0];
        assert!(
            took >= std::time::Duration::from_millis(1900) && took < std::time::Duration::from_millis(2700),
            "one stop took {took:?} for kill_timeout = 2"
        );
    }
    assert!(processes(&project, "sleep 1000").is_empty());
}

#[test]
fn a_failed_deploy_puts_back_instances_a_region_add_started() {
    // `regions add` marks no release current on the new region's host: a revert there
    // goes back to what the rest of the fleet runs, it does not remove the instance.
    // The primary goes last, so the new region's instance is replaced first.
    let project =
        Project::builder().region("syd", 1).proxy("  enabled = false").ferry_keys("primary_last = true").build();
    project.deploy("v1").assert_ok();
    project.ferry(&["regions", "add", "ams", "--count", "1"]).assert_ok();
    project.set_mode(Some("fail-health"));
    let run = project.ferry(&["deploy", "--version", "v2", "--json", "--wait-timeout", "3s"]);
    assert_put_back_on_v1(&project, &run);
    assert_eq!(project.versions_served(), ["v1"; 2], "both regions serve v1 again");
}

#[test]
fn rollback_lists_releases_newest_first_and_refuses_one_that_never_completed() {
    let project = Project::builder().region("syd", 1).build();
    project.deploy("v9").assert_ok();
    project.deploy("v10").assert_ok();
    project.set_mode(Some("fail-health"));
    assert_eq!(project.ferry(&["deploy", "--version", "v11", "--wait-timeout", "2s"]).code, 1);
    let never = project.ferry(&["rollback", "v8"]);
    assert_eq!(never.code, 2, "{}", never.stderr);
    assert!(never.stderr.contains("v8 was never deployed"), "{}", never.stderr);
    assert!(never.stderr.contains("v11 (never completed), v10, v9"), "newest first, bad ones marked: {}", never.stderr);
    let bad = project.ferry(&["rollback", "v11"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("never completed a deploy (its last one was reverted)"), "{}", bad.stderr);
    assert!(bad.stderr.contains("--force"), "{}", bad.stderr);
    project.ferry(&["rollback", "v11", "--force", "--dry-run"]).assert_ok();
    project.ferry(&["rollback", "v9"]).assert_ok();
    assert_eq!(project.versions_served(), ["v9"]);
}

#[test]
fn a_deploy_refused_by_the_lock_builds_nothing_and_waiting_says_for_whom() {
    let project = Project::builder().region("syd", 1).build();
    project.deploy("v1").assert_ok();
    project.set_mode(Some("slow-start=3000"));
    let mut child = project.spawn(&["deploy", "--version", "v2", "--json"]);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    wait_for_event(&mut stdout, |e| e["event"] == "deploy_started").expect("first deploy started");
    let refused = project.ferry(&["deploy", "--version", "v3", "--json"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(!refused.events().iter().any(|e| e["event"] == "built"), "nothing was built: {}", refused.stdout);
    assert!(!project.path().join(".ferry/build/hello-v3.tar.gz").exists());
    assert_eq!(refused.events().last().unwrap()["event"], "error");
    let waited = project.ferry(&["deploy", "--version", "v3", "--lock-wait", "1s"]);
    assert_eq!(waited.code, 1, "{}", waited.stderr);
    assert!(waited.stderr.contains("waiting up to 1s for the lock on `local/syd`, held by"), "{}", waited.stderr);
    assert!(waited.stderr.contains("after waiting 1s"), "{}", waited.stderr);
    assert!(!waited.stderr.contains("--lock-wait"), "no use suggesting it again: {}", waited.stderr);
    assert!(child.wait().unwrap().success());
}

#[test]
fn ctrl_c_during_a_deploy_says_where_the_fleet_stands_and_the_rerun_finishes_it() {
    let project = Project::builder().region("syd", 3).build();
    project.deploy("v1").assert_ok();
    project.set_mode(Some("slow-start=1500"));
    let mut child = project
        .command(&["deploy", "--version", "v2", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    wait_for_event(&mut stdout, |e| e["event"] == "instance_healthy").expect("one instance is on v2");
    wait_for_event(&mut stdout, |e| e["event"] == "instance_updating").expect("the next is being replaced");
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let error = wait_for_event(&mut stdout, |e| e["event"] == "error").expect("--json ends with the error");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("interrupted during the deploy of v2"), "{message}");
    assert!(message.contains("1 instance(s) already run v2"), "{message}");
    assert!(message.contains("Running the same command again finishes the deploy"), "{message}");
    assert!(stderr.contains("interrupted during the deploy of v2"), "{stderr}");
    project.deploy("v2").assert_ok();
    assert_eq!(project.versions_served(), ["v2"; 3]);
}

#[test]
fn exec_and_console_run_in_an_instance_s_environment_and_pass_its_exit_code_on() {
    let project = Project::builder().region("syd", 1).region("lax", 1).build();
    project.deploy("v1").assert_ok();
    project.set_secret("API_KEY", b"hunter2").assert_ok();
    let lax = project.instances().into_iter().find(|i| i["region"] == "lax").unwrap();
    let lax_id = lax["id"].as_str().unwrap().to_string();

    let env = project.ferry(&["exec", "-r", "lax", "--", "env"]);
    env.assert_ok();
    for line in
        ["FLY_REGION=lax", &format!("FERRY_INSTANCE_ID={lax_id}"), &format!("PORT={}", lax["port"]), "API_KEY=hunter2"]
    {
        assert!(env.stdout.lines().any(|l| l == line), "{line} in {}", env.stdout);
    }
    // One word is read like a start command; the directory is the instance's own.
    let pwd = project.ferry(&["exec", "-i", &lax_id[..6], "--", "pwd; exit 7"]);
    assert_eq!(pwd.code, 7, "the command's exit code: {}", pwd.stderr);
    assert!(pwd.stdout.trim().ends_with(&format!("instances/{lax_id}/root")), "{}", pwd.stdout);
    assert!(!pwd.stderr.contains("error"), "nothing more is said: {}", pwd.stderr);
    // The primary region by default; several words are run as they are.
    let words = project.ferry(&["exec", "--", "sh", "-c", "echo \"$FLY_REGION\" \"$1\"", "-", "a b"]);
    assert_eq!(words.stdout, "syd a b\n", "{}", words.stderr);

    let console = project.with_stdin(&["console", "-r", "lax"], b"echo \"region $FLY_REGION\"\nexit 3\n");
    assert_eq!((console.code, console.stdout.as_str()), (3, "region lax\n"), "{}", console.stderr);

    let unknown = project.ferry(&["exec", "-i", "nope", "--", "true"]);
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
    assert!(unknown.stderr.contains("no instance `nope`"), "{}", unknown.stderr);
}
