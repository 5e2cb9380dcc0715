//! Regions, scale, secrets and migrate on the local target, through the real binary.

mod common;

use common::Project;

#[test]
fn regions_add_starts_instances_and_remove_stops_them_keeping_comments() {
    let project = Project::builder().region("syd", 1).build();
    let config = project.path().join("fly.toml");
    let original = format!("# my app\n{}# the end\n", std::fs::read_to_string(&config).unwrap());
    std::fs::write(&config, &original).unwrap();
    project.deploy("v1").assert_ok();

    let added = project.ferry(&["regions", "add", "ams", "--count", "2"]);
    added.assert_ok();
    assert!(added.stderr.contains("added [ferry.regions.ams] (count = 2) to fly.toml"), "{}", added.stderr);
    assert_eq!(project.instances().iter().filter(|i| i["region"] == "ams").count(), 2);
    assert_eq!(project.versions_served(), ["v1"; 3]);
    let added = std::fs::read_to_string(&config).unwrap();
    common::assert_lines_kept(&original, &added);

    let dup = project.ferry(&["regions", "add", "ams"]);
    assert_eq!(dup.code, 2, "{}", dup.stderr);
    let primary = project.ferry(&["regions", "remove", "syd", "--yes"]);
    assert_eq!(primary.code, 2);
    assert!(primary.stderr.contains("primary"), "{}", primary.stderr);

    let ports: Vec<u16> = project.ports().into_iter().filter(|(r, _)| r == "ams").map(|(_, p)| p).collect();
    project.ferry(&["regions", "remove", "ams", "--yes"]).assert_ok();
    assert!(project.instances().iter().all(|i| i["region"] == "syd"));
    for port in ports {
        assert!(common::get(port, "/health").is_none(), "ams instance on {port} was stopped");
    }
    assert_eq!(std::fs::read_to_string(&config).unwrap(), original);
}

#[test]
fn scale_count_up_and_down_stops_the_newest_first() {
    let project = Project::builder().region("syd", 1).build();
    project.deploy("v1").assert_ok();
    let oldest = project.instances()[0]["id"].as_str().unwrap().to_string();
    let dry = project.ferry(&["scale", "count", "3", "--dry-run"]);
    dry.assert_ok();
    assert_eq!(project.instances().len(), 1, "dry run changes nothing");
    project.ferry(&["scale", "count", "3"]).assert_ok();
    assert_eq!(project.versions_served(), ["v1"; 3]);
    assert!(std::fs::read_to_string(project.path().join("fly.toml")).unwrap().contains("count = 3"));
    let refused = project.ferry(&["scale", "count", "1"]);
    assert_eq!(refused.code, 2, "stopping needs confirmation: {}", refused.stderr);
    assert_eq!(project.instances().len(), 3);
    let scaled = project.ferry(&["scale", "count", "1", "--yes"]);
    scaled.assert_ok();
    assert!(scaled.stderr.contains("count is 1 in syd (written to fly.toml)"), "{}", scaled.stderr);
    let left = project.instances();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"], oldest.as_str(), "the oldest instance keeps running");
}

#[test]
fn secrets_reach_instances_and_never_the_output() {
    let project = Project::builder()
        .region("syd", 2)
        .start(Some("printf '%s' \"$API_KEY\" > /proc/self/fd/1; echo; exec bin/hello"))
        .build();
    project.deploy("v1").assert_ok();
    let set = project.ferry(&["secrets", "set", "API_KEY=hunter2", "--json"]);
    set.assert_ok();
    assert!(!set.stdout.contains("hunter2") && !set.stderr.contains("hunter2"));
    let logs = project.ferry(&["logs", "-n", "50"]);
    assert!(logs.stdout.contains("hunter2"), "the restarted instances see the secret: {}", logs.stdout);
    assert!(
        set.events().iter().filter(|e| e["event"] == "instance_healthy").count() == 2,
        "both restarted behind checks"
    );
    let list = project.ferry(&["secrets", "list"]);
    assert!(list.stdout.contains("API_KEY") && !list.stdout.contains("hunter2"), "{}", list.stdout);
    let staged = project.ferry(&["secrets", "set", "OTHER=x", "--stage", "--json"]);
    staged.assert_ok();
    assert!(!staged.events().iter().any(|e| e["event"] == "instance_updating"), "--stage restarts nothing");
}

#[test]
fn migrate_runs_the_release_command_alone() {
    let project = Project::builder()
        .region("syd", 1)
        .deploy_keys("  release_command = \"echo run-$RELEASE_VERSION >> {dir}/migrations.log\"")
        .build();
    project.deploy("v1").assert_ok();
    let pids: Vec<u64> = project.instances().iter().map(|i| i["pid"].as_u64().unwrap()).collect();
    project.ferry(&["migrate"]).assert_ok();
    let log = std::fs::read_to_string(project.path().join("migrations.log")).unwrap();
    assert_eq!(log, "run-v1\nrun-v1\n");
    let after: Vec<u64> = project.instances().iter().map(|i| i["pid"].as_u64().unwrap()).collect();
    assert_eq!(pids, after, "migrate touches no instance");
}

#[test]
fn a_region_added_after_a_plain_tar_deploy_gets_the_release_from_the_kept_archive() {
    // Random bytes do not deflate, so the hosts got the plain tar and keep no archive:
    // the new region's release must come from the copy ferry keeps.
    let project = Project::builder().region("syd", 1).build();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let noise: Vec<u8> = (0..8 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect();
    std::fs::write(project.path().join("rel/noise.bin"), &noise).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let built = project.ferry(&["release", "build", "--version", "v1", "--output", elsewhere.path().to_str().unwrap()]);
    built.assert_ok();
    let tarball = elsewhere.path().join("hello-v1.tar.gz");
    project.ferry(&["deploy", "--release", tarball.to_str().unwrap()]).assert_ok();

    project.ferry(&["regions", "add", "ams", "--count", "1"]).assert_ok();
    assert_eq!(project.versions_served(), ["v1"; 2]);
    let copy = project.path().join(".ferry/local/ams/local/hello/releases/v1/noise.bin");
    assert!(std::fs::read(copy).unwrap() == noise, "the new region has the file as built");
}

#[test]
fn secrets_keep_their_bytes_refuse_nul_and_show_no_digest() {
    let project = Project::builder()
        .region("syd", 1)
        .start(Some("printf 'seen=%s\\n' \"$(printf '%s|' \"$MULTI\" | base64 -w0)\"; exec bin/hello"))
        .build();
    project.deploy("v1").assert_ok();

    let typed = project.ferry(&["secrets", "set", "TYPED=hunter2x", "--stage"]);
    typed.assert_ok();
    assert!(typed.stderr.contains("command line") && typed.stderr.contains("TYPED=-"), "warned: {}", typed.stderr);
    assert!(!typed.stderr.contains("hunter2x") && !typed.stdout.contains("hunter2x"));

    let piped = project.set_secret("MULTI", b"a\nb\n");
    piped.assert_ok();
    assert!(!piped.stderr.contains("command line"), "stdin is the quiet way: {}", piped.stderr);
    let logs = project.ferry(&["logs", "-n", "50"]);
    // base64 of "a\nb\n|": both newlines arrived.
    assert!(logs.stdout.contains("seen=YQpiCnw="), "the value is kept exactly: {}", logs.stdout);

    let big = project.set_secret("BIG", &vec![b'x'; 200_000]);
    assert_eq!(big.code, 2, "more than an environment variable holds: {}", big.stderr);
    assert!(big.stderr.contains("at most"), "{}", big.stderr);
    let nul = project.set_secret("NUL", b"hunter\0two");
    assert_eq!(nul.code, 2, "{}", nul.stderr);
    assert!(nul.stderr.contains("NUL") && !nul.stderr.contains("hunter"), "{}", nul.stderr);

    let list = project.ferry(&["secrets", "list", "--json"]);
    list.assert_ok();
    let rows = list.rows();
    let names: Vec<&str> = rows.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["MULTI", "TYPED"], "NUL was not stored: {}", list.stdout);
    for row in &rows {
        assert!(row.get("digest").is_none(), "nothing derived from a value is shown: {row}");
        assert!(row["set_at"].as_str().is_some_and(|t| t.ends_with('Z')), "when it was set: {row}");
    }
}

#[test]
fn a_failing_instance_s_output_is_quoted_redacted() {
    let project = Project::builder()
        .region("syd", 1)
        .toml("[env]\n  DB_PASSWORD = \"s3cr3t-env\"")
        .start(Some("printf 'pw=%s tok=%s\\n' \"$DB_PASSWORD\" \"$API_TOKEN\"; exec bin/hello"))
        .build();
    project.set_secret("API_TOKEN", b"tok-hunter2").assert_ok();
    project.deploy("v1").assert_ok();
    project.set_mode(Some("fail-health"));
    let run = project.ferry(&["deploy", "--version", "v2", "--wait-timeout", "2s"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("pw=[redacted:DB_PASSWORD] tok=[redacted:API_TOKEN]"), "{}", run.stderr);
    let history = std::fs::read_to_string(project.path().join(".ferry/local/syd/local/hello/history.jsonl")).unwrap();
    let releases = project.ferry(&["releases", "--json"]).stdout;
    for text in [&run.stderr, &run.stdout, &history, &releases] {
        assert!(!text.contains("s3cr3t-env") && !text.contains("tok-hunter2"), "{text}");
    }
}

#[test]
fn restart_replaces_every_instance_behind_its_checks_with_staged_secrets() {
    let project =
        Project::builder().region("syd", 2).start(Some("printf 'flag=%s\\n' \"$FLAG\"; exec bin/hello")).build();
    project.deploy("v1").assert_ok();
    let before: Vec<u64> = project.instances().iter().map(|i| i["pid"].as_u64().unwrap()).collect();
    let mut child = project
        .command(&["secrets", "set", "FLAG=-", "--stage"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"staged-on").unwrap();
    drop(child.stdin.take());
    let staged = common::Run::from(child.wait_with_output().unwrap());
    staged.assert_ok();
    assert!(staged.stderr.contains("`ferry restart`"), "names the command that applies it: {}", staged.stderr);
    assert!(!project.ferry(&["logs", "-n", "50"]).stdout.contains("flag=staged-on"), "staged: not used yet");
    let run = project.ferry(&["restart", "--json"]);
    run.assert_ok();
    assert_eq!(run.events().iter().filter(|e| e["event"] == "instance_healthy").count(), 2, "{}", run.stdout);
    let after: Vec<u64> = project.instances().iter().map(|i| i["pid"].as_u64().unwrap()).collect();
    assert!(before.iter().all(|p| !after.contains(p)), "every instance is a new process: {before:?} {after:?}");
    assert!(project.ferry(&["logs", "-n", "50"]).stdout.contains("flag=staged-on"));
    assert_eq!(project.versions_served(), ["v1"; 2]);
}

#[test]
fn logs_follow_prints_new_lines_and_new_instances_until_ctrl_c() {
    let project = Project::builder().region("syd", 1).build();
    project.deploy("v1").assert_ok();
    let mut child =
        project.command(&["logs", "--follow", "--json"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    common::wait_for_event(&mut stdout, |l| l["line"].as_str().is_some_and(|t| t.contains("hello v1 listening")))
        .expect("the tail comes first");
    // A deploy starts a new instance: its lines follow, from its first one.
    project.deploy("v2").assert_ok();
    let line =
        common::wait_for_event(&mut stdout, |l| l["line"].as_str().is_some_and(|t| t.contains("hello v2 listening")))
            .expect("the new instance's lines are followed");
    assert_eq!(line["region"], "syd");
    assert!(std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let last = common::wait_for_event(&mut stdout, |l| l["event"] == "finished");
    assert!(last.is_some(), "Ctrl-C ends it as a finished run");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn status_watch_shows_the_status_again_until_ctrl_c() {
    let project = Project::builder().region("syd", 1).build();
    project.deploy("v1").assert_ok();
    let mut child =
        project.command(&["status", "--watch", "--json"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    for _ in 0..2 {
        let status = common::wait_for_event(&mut stdout, |l| l.get("instances").is_some()).expect("a status");
        assert_eq!(status["current_version"], "v1");
    }
    assert!(std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    assert!(common::wait_for_event(&mut stdout, |l| l["event"] == "finished").is_some());
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// `GET /` through a front door at `addr`: hello names the instance that answered.
fn answered_by(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), std::time::Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    write!(stream, "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response.split_once("\r\n\r\n")?.1.to_string())
}

/// The command line and environment of an instance's process, from `/proc`.
fn process_of(instance: &serde_json::Value) -> (String, String) {
    let pid = instance["pid"].as_u64().expect("a running instance has a pid");
    let read = |what: &str| {
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/{what}")).unwrap_or_default()).replace('\0', " ")
    };
    (read("cmdline"), read("environ"))
}

fn of_group<'a>(instances: &'a [serde_json::Value], group: &str) -> Vec<&'a serde_json::Value> {
    instances.iter().filter(|i| i["group"] == group).collect()
}

#[test]
fn process_groups_run_at_their_own_counts_and_only_the_web_group_takes_requests() {
    let project = Project::builder()
        .region("syd", 2)
        .region("lax", 2)
        .start(None)
        .toml("[processes]\n  app = \"bin/hello\"\n  worker = \"bin/hello worker\"\n")
        .build();
    let config = project.path().join("fly.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("  count = 2\n", "  count = 2\n  counts = { worker = 1 }\n")).unwrap();
    project.deploy("v1").assert_ok();

    let instances = project.instances();
    let (web, workers) = (of_group(&instances, "app"), of_group(&instances, "worker"));
    assert_eq!(web.len(), 4, "{instances:?}");
    for region in ["syd", "lax"] {
        assert_eq!(workers.iter().filter(|w| w["region"] == region).count(), 1, "one worker in {region}");
    }
    for worker in &workers {
        let (cmdline, environ) = process_of(worker);
        assert!(cmdline.contains("bin/hello worker"), "{cmdline}");
        assert!(environ.contains("FLY_PROCESS_GROUP=worker"), "{environ}");
        assert_eq!(worker["traffic"], false, "a worker takes no traffic: {worker}");
    }
    for one in &web {
        let (cmdline, environ) = process_of(one);
        assert!(!cmdline.contains("worker") && environ.contains("FLY_PROCESS_GROUP=app"), "{cmdline} {environ}");
    }
    let status = project.ferry(&["status"]);
    assert!(status.stdout.contains("GROUP") && status.stdout.contains("worker"), "{}", status.stdout);

    // Every request through both regions' doors reaches the web group only.
    let worker_ids: Vec<&str> = workers.iter().map(|w| w["id"].as_str().unwrap()).collect();
    let mut seen = std::collections::BTreeSet::new();
    for (_, door) in project.front_doors() {
        for _ in 0..40 {
            let body = answered_by(&door).expect("the front door answers");
            assert!(!worker_ids.iter().any(|id| body.contains(id)), "a worker answered: {body}");
            seen.extend(web.iter().map(|w| w["id"].as_str().unwrap()).filter(|id| body.contains(id)));
        }
    }
    assert_eq!(seen.len(), 4, "every web instance took requests");

    // v2's worker exits at start: the deploy fails and each group goes back to its
    // own command (the web group's replacements included).
    let v1 = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        v1.replace("worker = \"bin/hello worker\"", "worker = \"env HELLO_MODE=exit-at-start bin/hello worker\""),
    )
    .unwrap();
    let failed = project.deploy("v2");
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    let instances = project.instances();
    assert!(instances.iter().all(|i| i["version"] == "v1"), "{instances:?}");
    for instance in &instances {
        let (cmdline, environ) = process_of(instance);
        let worker = instance["group"] == "worker";
        assert_eq!(cmdline.contains("bin/hello worker"), worker, "{instance}: {cmdline}");
        assert!(!environ.contains("exit-at-start"), "{instance}: {environ}");
    }
    assert_eq!(of_group(&instances, "worker").len(), 2);

    // Scaling the workers of one region changes nothing else.
    std::fs::write(&config, &v1).unwrap();
    let web_ids = |instances: &[serde_json::Value]| -> Vec<String> {
        let mut ids: Vec<String> =
            of_group(instances, "app").iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
        ids.sort();
        ids
    };
    let before = web_ids(&instances);
    project.ferry(&["scale", "count", "worker=2", "--region", "lax", "--yes"]).assert_ok();
    let instances = project.instances();
    assert_eq!(web_ids(&instances), before);
    let workers = of_group(&instances, "worker");
    assert_eq!((workers.iter().filter(|w| w["region"] == "lax").count(), workers.len()), (2, 3));
    assert!(std::fs::read_to_string(&config).unwrap().contains("counts = { worker = 2 }"));

    // A deploy without the worker group stops its instances once the web group is on v3.
    let without = std::fs::read_to_string(&config).unwrap().replace("  worker = \"bin/hello worker\"\n", "");
    std::fs::write(&config, without).unwrap();
    let deployed = project.deploy("v3");
    deployed.assert_ok();
    assert!(deployed.stderr.contains("not in `[processes]`"), "the stale counts are warned about: {}", deployed.stderr);
    let instances = project.instances();
    assert!(instances.iter().all(|i| i["group"] == "app" && i["version"] == "v3"), "{instances:?}");
    assert_eq!(instances.len(), 4);
}
