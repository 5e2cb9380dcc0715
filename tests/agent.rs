//! ferry's agent keeps instances up, through the real binary and real processes: the
//! restart policy after a crash, a release that dies right after passing its checks,
//! a start command that daemonizes, a killed agent, signals, checks that do not flood
//! the app, config changes on the same version, records that lie or break.

mod common;

use std::time::Duration;

use common::{eventually, Project};
use serde_json::Value;

/// Waits until `check` holds, up to `limit`; what it last saw when it never does.
fn pid_of(instance: &Value) -> u64 {
    instance["pid"].as_u64().unwrap_or(0)
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

/// Processes whose working directory is under the project (what its instances left).
fn project_processes(project: &Project) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| alive(u64::from(*pid)))
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(project.path())))
        .collect()
}

#[test]
fn a_killed_instance_is_restarted_by_its_policy_and_status_says_how_it_ended() {
    let project = Project::builder().region("syd", 1).build();
    project.deploy("v1").assert_ok();
    let before = pid_of(&project.instances()[0]);
    std::process::Command::new("kill").args(["-9", &before.to_string()]).status().unwrap();
    let restarted = eventually(Duration::from_secs(10), || {
        let instance = project.instances().into_iter().next()?;
        (pid_of(&instance) != before && instance["state"] == "running").then_some(instance)
    });
    assert_eq!(restarted["restarts"], 1, "{restarted}");
    assert!(restarted["last_exit"].as_str().unwrap().contains("SIGKILL"), "{restarted}");
    assert_eq!(project.versions_served(), ["v1"]);
    let table = project.ferry(&["status"]);
    assert!(table.stdout.contains("signal 9 (SIGKILL)"), "{}", table.stdout);
}

#[test]
fn a_restarted_instance_that_crashes_before_its_checks_pass_is_restarted_again() {
    // Starts 2 and 3 fail at once (a database briefly away, say); start 4 serves.
    let start = "n=$(cat {dir}/starts 2>/dev/null || echo 0); echo $((n + 1)) > {dir}/starts; \
                 if [ \"$n\" -ge 1 ] && [ \"$n\" -le 2 ]; then exit 1; fi; exec bin/hello";
    let project = Project::builder().region("syd", 1).start(Some(start)).build();
    project.deploy("v1").assert_ok();
    let before = pid_of(&project.instances()[0]);
    std::process::Command::new("kill").args(["-9", &before.to_string()]).status().unwrap();
    let back = eventually(Duration::from_secs(20), || {
        let instance = project.instances().into_iter().next()?;
        (pid_of(&instance) != before && instance["state"] == "running").then_some(instance)
    });
    assert_eq!(back["restarts"], 3, "{back}");
    assert_eq!(std::fs::read_to_string(project.path().join("starts")).unwrap().trim(), "4");
    assert_eq!(project.versions_served(), ["v1"]);
}

#[test]
fn a_release_that_dies_after_passing_its_checks_fails_the_deploy_and_is_reverted() {
    let project = Project::builder().region("syd", 2).ferry_keys("[ferry.deploy]\n  min_healthy_time = \"3s\"").build();
    project.deploy("v1").assert_ok();
    project.set_mode(Some("crash-after=1500"));
    let run = project.deploy("v2");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("after it became healthy"), "says what happened: {}", run.stderr);
    assert!(run.stderr.contains("put back on v1"), "{}", run.stderr);
    assert_eq!(project.versions_served(), ["v1"; 2]);
    assert_eq!(project.releases()[0]["status"], "reverted");
}

#[test]
fn the_default_min_healthy_time_catches_a_crash_a_second_after_start() {
    let project = Project::builder().region("syd", 1).build();
    project.deploy("v1").assert_ok();
    project.set_mode(Some("crash-after=700"));
    let run = project.deploy("v2");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(project.versions_served(), ["v1"]);
}

#[test]
fn a_daemonizing_start_command_fails_with_the_foreground_message_and_leaves_nothing() {
    let project = Project::builder().region("syd", 1).start(Some("setsid bin/hello & exit 0")).build();
    let run = project.deploy("v1");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("must stay in the foreground"), "{}", run.stderr);
    let left = eventually(Duration::from_secs(5), || {
        let left = project_processes(&project);
        left.is_empty().then_some(left)
    });
    assert!(left.is_empty());
}

#[test]
fn destroy_stops_daemons_an_instance_started_outside_its_session() {
    // `setsid` puts the sleeper in a session of its own, as `epmd -daemon` does.
    let project =
        Project::builder().region("syd", 1).start(Some("setsid sleep 1000 > /dev/null 2>&1 & exec bin/hello")).build();
    project.deploy("v1").assert_ok();
    assert!(project_processes(&project).len() >= 2, "the instance and its daemon run");
    project.ferry(&["destroy", "--yes"]).assert_ok();
    let left = eventually(Duration::from_secs(5), || {
        let left = project_processes(&project);
        left.is_empty().then_some(left)
    });
    assert!(left.is_empty());
}

#[test]
fn a_killed_agent_leaves_its_instances_running_and_the_next_command_adopts_them() {
    let project = Project::builder().region("syd", 2).build();
    project.deploy("v1").assert_ok();
    let pids: Vec<u64> = project.instances().iter().map(pid_of).collect();
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(project.state_dir().join("agent.json")).unwrap()).unwrap();
    let agent = info["pid"].as_u64().unwrap();
    std::process::Command::new("kill").args(["-9", &agent.to_string()]).status().unwrap();
    eventually(Duration::from_secs(5), || (!alive(agent)).then_some(()));
    assert_eq!(project.versions_served(), ["v1"; 2], "the instances never stopped");
    let adopted: Vec<u64> = project.instances().iter().map(pid_of).collect();
    assert_eq!(adopted, pids, "the new agent adopted them as they are");
    // Adopted, they are supervised again: a crash is restarted.
    std::process::Command::new("kill").args(["-9", &pids[0].to_string()]).status().unwrap();
    eventually(Duration::from_secs(10), || {
        let now: Vec<u64> = project.instances().iter().map(pid_of).collect();
        (!now.contains(&pids[0]) && now.iter().all(|p| *p != 0)).then_some(())
    });
    assert_eq!(project.versions_served(), ["v1"; 2]);
}

#[test]
fn a_failing_deploy_sends_a_few_checks_a_second_and_reports_the_apps_own_lines() {
    // Without a front door the failing instance replaces the old one in place, so its
    // log stays to be read (one started beside the old one is removed with its log).
    let project = Project::builder().region("syd", 1).env("HELLO_LOG_REQUESTS", "1").proxy("  enabled = false").build();
    // The app logs every request it gets, with who sent it.
    let config = project.path().join("fly.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[http_service]", "[env]\n  HELLO_LOG_REQUESTS = \"1\"\n\n[http_service]");
    std::fs::write(&config, text).unwrap();
    project.deploy("v1").assert_ok();
    project.set_mode(Some("fail-health"));
    let run = project.ferry(&["deploy", "--version", "v2", "--wait-timeout", "5s", "--json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let failed = run.events().into_iter().find(|e| e["event"] == "instance_failed").expect("an instance_failed event");
    let report: Vec<&str> = failed["log"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(report.iter().any(|l| l.contains("hello v2 listening")), "{report:?}");
    assert!(!report.iter().any(|l| l.contains("/health")), "health-check noise is left out: {report:?}");
    let log = project.ferry(&["logs", "-n", "10000"]);
    let checks =
        log.stdout.lines().filter(|l| l.contains("GET /health 503") && l.contains("ferry-health-check")).count();
    // 5, 10, 20, ... 320 ms apart, then 400 ms: about 18 in 5 s, never hundreds.
    assert!((3..=30).contains(&checks), "{checks} checks during a failed 5 s wait");
}

#[test]
fn deploying_the_same_version_with_another_env_restarts_instances_with_it() {
    let project = Project::builder()
        .region("syd", 2)
        .toml("[env]\n  GREETING = \"one\"")
        .start(Some("env > env.out; exec bin/hello"))
        .build();
    project.deploy("v1").assert_ok();
    let before: Vec<u64> = project.instances().iter().map(pid_of).collect();
    let config = project.path().join("fly.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace("GREETING = \"one\"", "GREETING = \"two\"");
    std::fs::write(&config, text).unwrap();
    let dry = project.ferry(&["deploy", "--version", "v1", "--dry-run"]);
    dry.assert_ok();
    assert!(dry.stderr.contains("its env changed"), "the plan says why: {}", dry.stderr);
    project.deploy("v1").assert_ok();
    let after: Vec<u64> = project.instances().iter().map(pid_of).collect();
    assert!(after.iter().all(|p| !before.contains(p)), "every instance was replaced: {before:?} {after:?}");
    let envs = glob(&project.path().join(".ferry/local"), "env.out");
    assert_eq!(envs.len(), 2);
    assert!(envs.iter().all(|e| e.lines().any(|l| l == "GREETING=two")), "{envs:?}");
    // The same settings again: nothing to do.
    let again = project.deploy("v1");
    again.assert_ok();
    assert!(again.stderr.contains("nothing changed"), "{}", again.stderr);
}

fn glob(dir: &std::path::Path, name: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_symlink() {
            continue;
        }
        if path.is_dir() {
            found.extend(glob(&path, name));
        } else if path.file_name().is_some_and(|n| n == name) {
            found.push(std::fs::read_to_string(&path).unwrap());
        }
    }
    found
}

#[test]
fn instances_start_with_default_signals_even_when_ferry_ran_with_them_ignored() {
    let project = Project::builder()
        .region("syd", 1)
        .start(Some("grep -E '^(SigIgn|SigBlk)' /proc/self/status > signals.out; exec bin/hello"))
        .build();
    // `nohup` and `&` in a script hand SIGHUP and SIGINT down as ignored.
    let command = project.command(&["deploy", "--version", "v1"]);
    let ferry = command.get_program().to_owned();
    let run = std::process::Command::new("sh")
        .args(["-c", "trap '' INT HUP QUIT; exec \"$0\" deploy --version v1"])
        .arg(&ferry)
        .current_dir(project.path())
        .envs(command.get_envs().filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))))
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let out = glob(&project.path().join(".ferry/local"), "signals.out");
    let text = out.first().expect("the instance wrote its signals");
    for line in text.lines() {
        let mask = u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap();
        // Signals 1 to 31; glibc keeps 32 and 33 (below SIGRTMIN) for its own threads.
        assert_eq!(mask & 0x7fff_ffff, 0, "no signal ignored or blocked: {text}");
    }
}

#[test]
fn a_broken_record_does_not_make_ferry_forget_a_running_instance() {
    let project = Project::builder().region("syd", 1).build();
    project.deploy("v1").assert_ok();
    let instance = project.instances()[0].clone();
    let id = instance["id"].as_str().unwrap();
    let record = project.path().join(format!(".ferry/local/syd/local/hello/instances/{id}/instance.json"));
    std::fs::write(&record, "{\"id\": \"trunc").unwrap();
    let seen = project.instances();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(pid_of(&seen[0]), pid_of(&instance));
    project.ferry(&["destroy", "--yes"]).assert_ok();
    eventually(Duration::from_secs(5), || (!alive(pid_of(&instance))).then_some(()));
}

#[test]
fn a_recorded_pid_that_now_belongs_to_another_process_is_never_signalled() {
    let project = Project::builder().region("syd", 1).build();
    project.deploy("v1").assert_ok();
    let instance = project.instances()[0].clone();
    // The agent that knew better is gone, and the record now names another process
    // (as a reused pid would): only the pid and its start time together identify one.
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(project.state_dir().join("agent.json")).unwrap()).unwrap();
    let agent = info["pid"].as_u64().unwrap();
    std::process::Command::new("kill").args(["-9", &agent.to_string()]).status().unwrap();
    eventually(Duration::from_secs(5), || (!alive(agent)).then_some(()));
    let mut bystander = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
    let id = instance["id"].as_str().unwrap();
    let record = project.path().join(format!(".ferry/local/syd/local/hello/instances/{id}/instance.json"));
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    json["pid"] = Value::from(bystander.id());
    std::fs::write(&record, json.to_string()).unwrap();
    let now = project.instances();
    assert!(now.iter().all(|i| pid_of(i) != u64::from(bystander.id())), "never shown as the instance");
    assert_eq!(pid_of(&now[0]), pid_of(&instance), "the instance's own process, found by its mark, was adopted");
    assert_eq!(project.versions_served(), ["v1"]);
    project.ferry(&["destroy", "--yes"]).assert_ok();
    assert!(bystander.try_wait().unwrap().is_none(), "the bystander was not signalled");
    eventually(Duration::from_secs(5), || (!alive(pid_of(&instance))).then_some(()));
    let _ = bystander.kill();
    let _ = bystander.wait();
}

#[test]
fn a_chatty_instance_cannot_fill_the_disk_with_its_log() {
    let project = Project::builder()
        .region("syd", 1)
        .env("FERRY_AGENT_LOG_LIMIT", "65536")
        .start(Some("sh -c 'while :; do echo chatter chatter chatter chatter; done' & exec bin/hello"))
        .build();
    project.deploy("v1").assert_ok();
    let id = project.instances()[0]["id"].as_str().unwrap().to_string();
    let dir = project.path().join(format!(".ferry/local/syd/local/hello/instances/{id}"));
    let modified = || std::fs::metadata(dir.join("log.1")).and_then(|m| m.modified()).ok();
    let first = eventually(Duration::from_secs(10), modified);
    // Rotated again: it keeps rotating while the app chatters on.
    eventually(Duration::from_secs(10), || modified().filter(|at| *at != first));
    let size = |name: &str| std::fs::metadata(dir.join(name)).map_or(0, |m| m.len());
    // Bounded by the limit plus what a second of chatter adds before the next look.
    assert!(size("log") < 20 << 20 && size("log.1") < 20 << 20, "log {} log.1 {}", size("log"), size("log.1"));
    let lines = project.ferry(&["logs", "-n", "5"]);
    assert!(lines.stdout.contains("chatter"), "{}", lines.stdout);
}

#[test]
fn a_newer_ferry_takes_the_agent_over_without_stopping_instances() {
    let project = Project::builder().region("syd", 2).build();
    project.deploy("v1").assert_ok();
    let pids: Vec<u64> = project.instances().iter().map(pid_of).collect();
    let agent_info = || -> Value {
        serde_json::from_str(&std::fs::read_to_string(project.state_dir().join("agent.json")).unwrap()).unwrap()
    };
    let old = agent_info();
    // Another build: the same program with other bytes (a trailer the loader ignores).
    let newer = project.path().join("ferry-newer");
    let mut bytes = std::fs::read(common::FERRY).unwrap();
    bytes.extend_from_slice(b"\0another build\0");
    std::fs::write(&newer, bytes).unwrap();
    std::process::Command::new("chmod").arg("+x").arg(&newer).status().unwrap();
    let status = project.command(&["status", "--json"]);
    let run = std::process::Command::new(&newer)
        .args(["status", "--json"])
        .current_dir(project.path())
        .envs(status.get_envs().filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))))
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let new = agent_info();
    assert_ne!(new["exe"], old["exe"], "the newer build runs the agent now");
    assert_ne!(new["pid"], old["pid"]);
    assert!(!alive(old["pid"].as_u64().unwrap()), "the old agent handed over and left");
    let now: Vec<u64> = project.instances().iter().map(pid_of).collect();
    assert_eq!(now, pids, "no instance was stopped");
    assert_eq!(project.versions_served(), ["v1"; 2]);
    // The new agent serves the front door where the old one did.
    let doors = project.front_doors();
    assert_eq!(doors, [("syd".to_string(), format!("127.0.0.1:{}", project.port))], "{doors:?}");
    let answer = eventually(Duration::from_secs(5), || common::get(project.port, "/version"));
    assert_eq!(answer, (200, "v1\n".to_string()));
}

#[test]
fn a_long_call_is_served_to_the_end_by_an_agent_with_nothing_to_supervise() {
    // The first deploy's release_command runs while no instance does: an agent that
    // counted only new connections as activity would leave in the middle of it.
    let project = Project::builder()
        .region("syd", 1)
        .deploy_keys("  release_command = \"sleep 3\"")
        .env("FERRY_AGENT_IDLE_EXIT", "300ms")
        .build();
    project.deploy("v1").assert_ok();
    assert_eq!(project.versions_served(), ["v1"]);
}

#[test]
fn a_newer_ferry_leaves_a_busy_agent_alone_and_takes_over_once_it_is_free() {
    let project = Project::builder()
        .region("syd", 1)
        .deploy_keys("  release_command = \"touch {dir}/migrating; sleep 3\"")
        .build();
    project.deploy("v1").assert_ok();
    let agent_pid = || -> u64 {
        let info: Value =
            serde_json::from_str(&std::fs::read_to_string(project.state_dir().join("agent.json")).unwrap()).unwrap();
        info["pid"].as_u64().unwrap()
    };
    let before = agent_pid();
    let migrating = project.path().join("migrating");
    let _ = std::fs::remove_file(&migrating);
    let deploy = project.spawn(&["deploy", "--version", "v2"]);
    eventually(Duration::from_secs(30), || migrating.exists().then_some(()));
    // Another build, while the old agent runs the release_command.
    let newer = project.path().join("ferry-newer");
    let mut bytes = std::fs::read(common::FERRY).unwrap();
    bytes.extend_from_slice(b"\0another build\0");
    std::fs::write(&newer, bytes).unwrap();
    std::process::Command::new("chmod").arg("+x").arg(&newer).status().unwrap();
    let base = project.command(&["status", "--json"]);
    let run_newer = || {
        std::process::Command::new(&newer)
            .args(["status", "--json"])
            .current_dir(project.path())
            .envs(base.get_envs().filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))))
            .output()
            .unwrap()
    };
    let busy = run_newer();
    assert!(busy.status.success(), "{}", String::from_utf8_lossy(&busy.stderr));
    assert_eq!(agent_pid(), before, "the busy agent was not replaced");
    let deployed = deploy.wait_with_output().unwrap();
    assert!(
        deployed.status.success(),
        "the deploy the old agent served: {}",
        String::from_utf8_lossy(&deployed.stderr)
    );
    assert_eq!(project.versions_served(), ["v2"]);
    let free = run_newer();
    assert!(free.status.success(), "{}", String::from_utf8_lossy(&free.stderr));
    assert_ne!(agent_pid(), before, "once free, it handed over");
    assert!(!alive(before));
    assert_eq!(project.versions_served(), ["v2"]);
}
