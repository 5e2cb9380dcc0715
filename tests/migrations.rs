//! The release_command machine and backups before migrations, against a real
//! PostgreSQL primary (and replica) on loopback. Needs root (PostgreSQL runs as the
//! `postgres` user); without it each test says so (see `common::need`).

mod common;

use common::postgres::{Postgres, APP_PASSWORD};
use common::Project;
use std::time::Duration;

/// A project whose release_command records one row per run in `runs`.
fn migrating_project(extra_deploy: &str) -> Project {
    Project::builder()
        .region("syd", 2)
        .region("lax", 2)
        .deploy_keys(&format!(
            "  release_command = \"psql -X -q -v ON_ERROR_STOP=1 -d \\\"$DATABASE_URL\\\" -c \\\"CREATE TABLE IF NOT EXISTS runs (version text, rc text, grp text, app text, region text, prim text); INSERT INTO runs VALUES ('$RELEASE_VERSION', '$RELEASE_COMMAND', '$FLY_PROCESS_GROUP', '$FLY_APP_NAME', '$FLY_REGION', '$PRIMARY_REGION')\\\"\"\n{extra_deploy}"
        ))
        .build()
}

fn set_url(project: &Project, url: &str) {
    let mut child = project
        .command(&["secrets", "set", "DATABASE_URL=-", "--stage", "-q"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), url.as_bytes()).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

#[test]
fn release_command_runs_exactly_once_with_its_environment_before_any_instance_changes() {
    if !common::need::root_and_postgres() {
        return;
    }
    let pg = Postgres::start();
    let project = migrating_project("");
    set_url(&project, &pg.url());
    let run = project.ferry(&["deploy", "--version", "v1", "--json"]);
    run.assert_ok();
    assert_eq!(pg.primary("SELECT count(*) FROM runs"), "1", "once for 4 instances in 2 regions");
    assert_eq!(
        pg.primary("SELECT version || ' ' || rc || ' ' || grp || ' ' || app || ' ' || region || ' ' || prim FROM runs"),
        "v1 1 fly_app_release_command hello syd syd"
    );
    let events = run.events();
    let finished = events.iter().position(|e| e["event"] == "release_command_finished").unwrap();
    assert!(events.iter().position(|e| e["event"] == "instance_updating").unwrap() > finished);
    assert!(!run.stdout.contains(APP_PASSWORD) && !run.stderr.contains(APP_PASSWORD));
}

#[test]
fn release_command_timeout_kills_the_command_and_its_children() {
    let project = Project::builder()
        .region("syd", 1)
        .deploy_keys(
            "  release_command = \"sleep 300 & echo $! > {dir}/child.pid; wait\"\n  release_command_timeout = \"1s\"",
        )
        .build();
    let run = project.deploy("v1");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("timed out"), "{}", run.stderr);
    let pid = std::fs::read_to_string(project.path().join("child.pid")).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    assert!(stat.is_empty() || stat.contains(") Z"), "the child `sleep` was killed too: {stat}");
    assert!(project.instances().is_empty(), "no instance was started");
}

#[test]
fn backup_before_migrate_verifies_and_restores_exactly_the_old_rows() {
    if !common::need::root_and_postgres() {
        return;
    }
    let pg = Postgres::start();
    pg.primary("CREATE TABLE items (id int PRIMARY KEY, name text); INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, 'three'); ALTER TABLE items OWNER TO app");
    // A wrapper records how pg_dump was called (the password must not be in its argv).
    let project = Project::builder()
        .region("syd", 1)
        .ferry_keys("[ferry.backup]\n  before_migrate = true")
        .deploy_keys("  release_command = \"psql -X -q -v ON_ERROR_STOP=1 -d \\\"$DATABASE_URL\\\" -c 'DELETE FROM items WHERE id > 1; ALTER TABLE items ADD COLUMN price int'\"")
        .build();
    let wrappers = project.path().join("wrappers");
    std::fs::create_dir_all(&wrappers).unwrap();
    std::fs::write(
        wrappers.join("pg_dump"),
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> {}/pg_dump.argv\nexec /usr/bin/pg_dump \"$@\"\n",
            project.path().display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod").arg("+x").arg(wrappers.join("pg_dump")).status().unwrap();
    let path = format!("{}:{}", wrappers.display(), std::env::var("PATH").unwrap());
    set_url(&project, &pg.url());

    let run = project.command(&["deploy", "--version", "v1", "--json"]).env("PATH", &path).output().unwrap();
    let run = common::Run::from(run);
    run.assert_ok();
    assert_eq!(pg.primary("SELECT count(*) FROM items"), "1", "the migration ran");
    let backup = run.events().into_iter().find(|e| e["event"] == "backup_taken").expect("a backup was taken");
    let id = backup["id"].as_str().unwrap().to_string();
    assert!(backup["size"].as_u64().unwrap() > 0);

    let list = project.ferry(&["backups", "list", "--json"]);
    list.assert_ok();
    let backups = serde_json::Value::Array(list.rows());
    assert_eq!(backups[0]["id"], id.as_str());
    assert_eq!(backups[0]["database"], format!("127.0.0.1:{}/appdb", pg.primary_port));
    assert_eq!(backups[0]["release_after"], "v1");

    let refused = project.ferry(&["backups", "restore", &id]);
    assert_eq!(refused.code, 2, "restoring needs --yes without a terminal: {}", refused.stderr);
    project.ferry(&["backups", "restore", &id, "--yes"]).assert_ok();
    assert_eq!(pg.primary("SELECT string_agg(id || ':' || name, ',' ORDER BY id) FROM items"), "1:one,2:two,3:three");
    assert_eq!(
        pg.primary(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'items' AND column_name = 'price'"
        ),
        "0"
    );

    // The password appears nowhere: output, metadata, history, pg_dump's argv.
    let argv = std::fs::read_to_string(project.path().join("pg_dump.argv")).unwrap();
    assert!(argv.contains("-Fc") && !argv.contains(APP_PASSWORD), "{argv}");
    let mut everything = format!("{}{}{}{}", run.stdout, run.stderr, list.stdout, list.stderr);
    for file in walk(&project.path().join(".ferry/local")) {
        if file.extension().is_some_and(|e| e == "json" || e == "jsonl" || e == "log") {
            everything.push_str(&std::fs::read_to_string(&file).unwrap_or_default());
        }
    }
    assert!(!everything.contains(APP_PASSWORD) && !everything.contains("pw-Zq7"), "the password leaked");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() && !path.is_symlink() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn a_backup_that_fails_stops_the_deploy_before_the_migration() {
    if !common::need::root_and_postgres() {
        return;
    }
    let pg = Postgres::start();
    let project = migrating_project("");
    set_url(&project, &pg.url());
    project.deploy("v1").assert_ok();
    set_url(&project, &pg.url().replace("pw-", "wrong-"));
    let run = project.ferry(&["deploy", "--version", "v2", "--backup"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("backup") && run.stderr.contains("nothing was migrated"), "{}", run.stderr);
    assert!(run.stderr.contains("password authentication failed"), "says why: {}", run.stderr);
    assert!(!run.stderr.contains("wrong-Zq7"), "no password in the report");
    assert_eq!(pg.primary("SELECT count(*) FROM runs"), "1", "the v2 migration never ran");
    assert_eq!(project.versions_served(), ["v1"; 4]);
    assert_eq!(project.releases()[0]["status"], "failed");
}

/// syd (primary) and lax, one instance each; lax reads from the replica.
fn replica_project(pg: &Postgres, ferry_keys: &str) -> Project {
    let project = Project::builder()
        .region("syd", 1)
        .region("lax", 1)
        .ferry_keys(ferry_keys)
        .deploy_keys("  release_command = \"psql -X -q -v ON_ERROR_STOP=1 -d \\\"$DATABASE_URL\\\" -c \\\"CREATE TABLE IF NOT EXISTS runs (v text); INSERT INTO runs SELECT '$RELEASE_VERSION' FROM generate_series(1, 1000)\\\"\"")
        .build();
    let config = project.path().join("fly.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text
        .replace("[ferry.regions.lax]\n", &format!("[ferry.regions.lax]\n  replica_url = \"{}\"\n", pg.replica_url()));
    std::fs::write(&config, text).unwrap();
    set_url(&project, &pg.url());
    project
}

fn served(project: &Project, region: &str) -> String {
    let port = project.ports().into_iter().find(|(r, _)| r == region).unwrap().1;
    common::get(port, "/version").map_or_else(|| "down".into(), |(_, body)| body.trim().to_string())
}

#[test]
fn a_region_waits_for_its_replica_to_replay_the_migration() {
    if !common::need::root_and_postgres() {
        return;
    }
    let pg = Postgres::start();
    let project = replica_project(&pg, "");
    project.deploy("v1").assert_ok();
    pg.replica("SELECT pg_wal_replay_pause()");
    let mut child = project.spawn(&["deploy", "--version", "v2", "--json"]);
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let waiting = common::wait_for_event(&mut stdout, |e| e["event"] == "replica_waiting" && e["region"] == "lax")
        .expect("lax waits");
    assert!(waiting["lag_bytes"].as_u64().unwrap() > 0, "{waiting}");
    assert_eq!(served(&project, "syd"), "v2", "the primary region went first");
    assert_eq!(served(&project, "lax"), "v1", "lax keeps the old code while its replica is behind");
    pg.replica("SELECT pg_wal_replay_resume()");
    assert!(child.wait().unwrap().success());
    assert_eq!(served(&project, "lax"), "v2");
    assert_eq!(pg.replica("SELECT count(*) FROM runs WHERE v = 'v2'"), "1000", "the replica has the migration");
}

#[test]
fn a_replica_that_stays_behind_leaves_its_region_on_the_old_release() {
    if !common::need::root_and_postgres() {
        return;
    }
    let pg = Postgres::start();
    let project = replica_project(&pg, "replica_wait_timeout = \"1s\"");
    project.deploy("v1").assert_ok();
    pg.replica("SELECT pg_wal_replay_pause()");
    let run = project.deploy("v2");
    assert_eq!(run.code, 1, "{}", run.stderr);
    let expected = format!("region lax was not updated: replica `127.0.0.1:{}/appdb` is ", pg.replica_port);
    assert!(run.stderr.contains(&expected) && run.stderr.contains("bytes behind"), "{}", run.stderr);
    assert_eq!(served(&project, "syd"), "v2", "regions already done stay done");
    assert_eq!(served(&project, "lax"), "v1");
    assert_eq!(project.releases()[0]["status"], "failed");
    // Once replay resumes, the same deploy finishes the job.
    pg.replica("SELECT pg_wal_replay_resume()");
    project.deploy("v2").assert_ok();
    assert_eq!(served(&project, "lax"), "v2");
}

/// items(1..3), owned by `app`; each deploy's migration drops rows 2 and 3.
fn items_project(pg: &Postgres, backup_keys: &str) -> Project {
    pg.primary("CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY, name text); ALTER TABLE items OWNER TO app");
    pg.primary("INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, 'three') ON CONFLICT DO NOTHING");
    let project = Project::builder()
        .region("syd", 1)
        .ferry_keys(&format!("[ferry.backup]\n  before_migrate = true\n{backup_keys}"))
        .deploy_keys("  release_command = \"psql -X -q -v ON_ERROR_STOP=1 -d \\\"$DATABASE_URL\\\" -c 'DELETE FROM items WHERE id > 1'\"")
        .build();
    set_url(&project, &pg.url());
    project
}

#[test]
fn rollback_with_restore_backup_brings_back_code_and_data() {
    if !common::need::root_and_postgres() {
        return;
    }
    let pg = Postgres::start();
    let project = items_project(&pg, "");
    project.ferry(&["deploy", "--version", "v1", "--skip-release-command"]).assert_ok();
    project.deploy("v2").assert_ok();
    assert_eq!(pg.primary("SELECT count(*) FROM items"), "1");
    let refused = project.ferry(&["rollback", "--restore-backup"]);
    assert_eq!(refused.code, 2, "restoring needs --yes without a terminal: {}", refused.stderr);
    assert_eq!(pg.primary("SELECT count(*) FROM items"), "1", "nothing restored without confirmation");
    project.ferry(&["rollback", "--restore-backup", "--yes"]).assert_ok();
    assert_eq!(pg.primary("SELECT string_agg(name, ',' ORDER BY id) FROM items"), "one,two,three");
    assert_eq!(project.versions_served(), ["v1"]);
}

#[test]
fn backup_can_run_on_this_machine_and_is_stored_on_the_host() {
    if !common::need::root_and_postgres() {
        return;
    }
    let pg = Postgres::start();
    let project = items_project(&pg, "  run = \"local\"\n  keep = 2");
    for version in ["v1", "v2", "v3"] {
        project.deploy(version).assert_ok();
    }
    let list = project.ferry(&["backups", "list", "--json"]);
    let backups: Vec<serde_json::Value> = list.rows();
    assert_eq!(backups.len(), 2, "kept to [ferry.backup] keep: {backups:?}");
    assert_eq!(backups[0]["release_after"], "v3");
    let dumps = walk(&project.path().join(".ferry/local"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dump"))
        .count();
    assert_eq!(dumps, 2);
    assert!(!project.path().join(".ferry/backups-staging").exists(), "nothing left on this machine");
    let id = backups[1]["id"].as_str().unwrap();
    project.ferry(&["backups", "restore", id, "--yes"]).assert_ok();
}

#[test]
fn migrations_backups_and_replica_waits_work_over_ssh() {
    if !common::need::root_and_postgres() {
        return;
    }
    let pg = Postgres::start();
    let fleet = common::sshd::SshFleet::start(2);
    let project = Project::builder()
        .ferry_keys("target = \"ssh\"\n[ferry.backup]\n  before_migrate = true")
        .env("FERRY_SSH_CONFIG", fleet.ssh_config().to_str().unwrap())
        .ssh_region("syd", &[fleet.hosts()[0].spec()], 1)
        .ssh_region("lax", &[fleet.hosts()[1].spec()], 1)
        .deploy_keys("  release_command = \"psql -X -q -v ON_ERROR_STOP=1 -d \\\"$DATABASE_URL\\\" -c \\\"CREATE TABLE IF NOT EXISTS runs (v text, region text); INSERT INTO runs VALUES ('$RELEASE_VERSION', '$FLY_REGION')\\\"\"")
        .build();
    let config = project.path().join("fly.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "[ferry.regions.lax]\n",
            &format!("[ferry.regions.lax]\n  replica_url = \"{}\"\n", pg.replica_url()),
        ),
    )
    .unwrap();
    set_url(&project, &pg.url());

    project.deploy("v1").assert_ok();
    assert_eq!(
        pg.primary("SELECT string_agg(v || '@' || region, ',') FROM runs"),
        "v1@syd",
        "once, on the primary's host"
    );
    pg.replica("SELECT pg_wal_replay_pause()");
    let mut child = project.spawn(&["deploy", "--version", "v2", "--json"]);
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    common::wait_for_event(&mut stdout, |e| e["event"] == "replica_waiting" && e["region"] == "lax")
        .expect("lax waits for its replica through the host");
    assert_eq!(served(&project, "lax"), "v1");
    pg.replica("SELECT pg_wal_replay_resume()");
    assert!(child.wait().unwrap().success());
    assert_eq!(project.versions_served(), ["v2", "v2"]);
    let dumps = fleet.ssh(0, "ls ~/ferry/hello/backups | grep -c 'dump$'");
    assert_eq!(String::from_utf8_lossy(&dumps.stdout).trim(), "2", "a verified dump per migration on the release host");
    let secrets = fleet.ssh(0, "stat -c %a ~/ferry/hello/secrets.env");
    assert_eq!(String::from_utf8_lossy(&secrets.stdout).trim(), "600");
}

#[test]
fn database_urls_of_every_length_are_read_back_from_secrets() {
    if !common::need::root_and_postgres() {
        return;
    }
    // base64 pads to a multiple of 3 bytes: three lengths cover "", "=" and "==".
    let pg = Postgres::start();
    let project = Project::builder().region("syd", 1).build();
    for suffix in ["", "?connect_timeout=10", "?application_name=ab"] {
        set_url(&project, &format!("{}{suffix}", pg.url()));
        let run = project.ferry(&["backups", "create"]);
        assert_eq!(run.code, 0, "url with {suffix:?}: {}", run.stderr);
    }
}

#[test]
fn release_command_output_never_keeps_a_secret_value() {
    const TOKEN: &str = "tok\"en\\42-x";
    const ENV_PASSWORD: &str = "s3cr3t-env";
    let project = Project::builder()
        .region("syd", 1)
        .toml(&format!("[env]\n  DB_PASSWORD = \"{ENV_PASSWORD}\""))
        .deploy_keys(
            r#"  release_command = "printf 't=%s p=%s\\n' \"$API_TOKEN\" \"$DB_PASSWORD\"; if test -e {dir}/fail; then printf 'failing with %s\\n' \"$API_TOKEN\" >&2; exit 3; fi""#,
        )
        .build();
    let mut child = project
        .command(&["secrets", "set", "API_TOKEN=-", "--stage", "-q"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), TOKEN.as_bytes()).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    let first = project.ferry(&["deploy", "--version", "v1", "--json"]);
    first.assert_ok();
    let app = project.path().join(".ferry/local/syd/local/hello");
    let (history, log) = (app.join("history.jsonl"), app.join("release_command.log"));
    // As an older ferry may have left them: readable by others.
    for file in [&history, &log] {
        std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }
    std::fs::write(project.path().join("fail"), "").unwrap();
    let failed = project.ferry(&["deploy", "--version", "v2", "--json"]);
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    assert!(failed.stderr.contains("[redacted:API_TOKEN]"), "the error quotes the output, redacted: {}", failed.stderr);
    let releases = project.ferry(&["releases", "--json"]);
    let written = [
        ("deploy output", format!("{}{}{}{}", first.stdout, first.stderr, failed.stdout, failed.stderr)),
        ("releases --json", releases.stdout),
        ("history.jsonl", std::fs::read_to_string(&history).unwrap()),
        ("release_command.log", std::fs::read_to_string(&log).unwrap()),
    ];
    for (what, text) in &written {
        assert!(!text.contains("tok\\\"en") && !text.contains("tok\"en"), "{what} holds the secret: {text}");
        assert!(!text.contains(ENV_PASSWORD), "{what} holds the [env] password: {text}");
    }
    assert!(written[3].1.contains("t=[redacted:API_TOKEN] p=[redacted:DB_PASSWORD]"), "{}", written[3].1);
    assert!(written[2].1.contains("[redacted:API_TOKEN]"), "the failure is recorded, redacted: {}", written[2].1);
    for file in [&history, &log] {
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(file).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "{} is private", file.display());
    }
}

fn gone(pid: &str) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    stat.is_empty() || stat.contains(") Z")
}

#[test]
fn release_command_timeout_ends_everything_it_forked_and_frees_the_lock() {
    let project = Project::builder()
        .region("syd", 1)
        .deploy_keys(
            "  release_command = \"(set -m; sleep 300 & echo $! > {dir}/a.pid); setsid env -i sh -c 'echo $$ > {dir}/b.pid; exec sleep 300' & sleep 300 & echo $! > {dir}/c.pid; wait\"\n  release_command_timeout = \"1s\"",
        )
        .build();
    let run = project.deploy("v1");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("timed out"), "{}", run.stderr);
    for name in ["a.pid", "b.pid", "c.pid"] {
        let pid = std::fs::read_to_string(project.path().join(name)).unwrap();
        common::eventually(Duration::from_secs(10), || gone(&pid).then_some(()));
    }
    assert!(project.instances().is_empty(), "no instance was started");
    let again = project.ferry(&["deploy", "--version", "v1", "--skip-release-command", "--json"]);
    again.assert_ok();
    assert!(!again.events().iter().any(|e| e["event"] == "lock_taken_over"), "the lock was released: {}", again.stdout);
}

#[test]
fn release_command_timeout_holds_on_ferrys_side_when_the_host_stops_answering() {
    let project = Project::builder()
        .region("syd", 1)
        .deploy_keys("  release_command = \"sleep 300\"\n  release_command_timeout = \"1s\"")
        .build();
    let mut child = project.spawn(&["deploy", "--version", "v1", "--json"]);
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    common::wait_for_event(&mut stdout, |e| e["event"] == "release_command_started").expect("it started");
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(project.state_dir().join("agent.json")).unwrap()).unwrap();
    let agent = info["pid"].as_u64().unwrap().to_string();
    // The host's agent stops answering (as a hung host would); it resumes in any case
    // after two minutes so that a failing run ends.
    assert!(std::process::Command::new("kill").args(["-STOP", &agent]).status().unwrap().success());
    let resume = {
        let agent = agent.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_mins(2));
            let _ = std::process::Command::new("kill").args(["-CONT", &agent]).status();
        })
    };
    let finished = common::wait_for_event(&mut stdout, |e| e["event"] == "release_command_finished");
    let status = child.wait().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{agent}/stat")).unwrap_or_default();
    let still_stopped = stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'));
    assert!(std::process::Command::new("kill").args(["-CONT", &agent]).status().unwrap().success());
    assert!(finished.is_some_and(|e| e["success"] == false), "the deploy gave up on the command");
    assert!(still_stopped, "it ended while the host still did not answer");
    assert_eq!(status.code(), Some(1));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("did not answer"), "{stderr}");
    drop(resume);
}
