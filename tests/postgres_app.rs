//! PostgreSQL deployed by ferry itself (`ferry launch --template postgres`): a primary
//! in syd, a streaming replica in lax from a volume and one command, `pg status` and
//! `pg connect-url`, and a deploy that updates the replica before the primary.
//! Needs root (the instances drop to the `postgres` user) and PostgreSQL's binaries.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

const PASSWORD: &str = "s3cret-'pg";

struct App {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    env: Vec<(String, String)>,
}

impl App {
    fn launch() -> App {
        let tmp = tempfile::tempdir().unwrap();
        // An ordinary project path, deep enough that a socket under it would pass the
        // 107 bytes a Unix socket's path may have.
        let parent = tmp.path().join("home/someone/projects/a-company/services");
        std::fs::create_dir_all(&parent).unwrap();
        // The postgres user must be able to reach the volumes below it.
        Command::new("chmod").arg("-R").arg("0755").arg(tmp.path()).status().unwrap();
        let dir = parent.join("pgapp");
        let out = Command::new(common::FERRY)
            .args(["launch", "--template", "postgres", "--name", "pgapp", "--region", "syd", "--dir"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        App { _tmp: tmp, dir, env: Vec::new() }
    }

    fn set_password(&self) {
        let mut set = self
            .command(&["secrets", "set", "POSTGRES_PASSWORD=-", "--stage", "-q"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(set.stdin.as_mut().unwrap(), PASSWORD.as_bytes()).unwrap();
        drop(set.stdin.take());
        assert!(set.wait().unwrap().success());
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(common::FERRY);
        command.args(args).current_dir(&self.dir).envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    fn ferry(&self, args: &[&str]) -> common::Run {
        common::Run::from(self.command(args).stdin(Stdio::null()).output().unwrap())
    }

    fn ok(&self, args: &[&str]) -> common::Run {
        let run = self.ferry(args);
        run.assert_ok();
        run
    }

    fn port(&self, region: &str) -> u16 {
        let status: Value = self.ok(&["status", "--json"]).data();
        let instance = status["instances"].as_array().unwrap().iter().find(|i| i["region"] == region).unwrap().clone();
        u16::try_from(instance["port"].as_u64().unwrap()).unwrap()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.command(&["destroy", "--yes", "-q"]).status();
    }
}

fn psql(port: u16, sql: &str) -> String {
    try_psql(port, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn try_psql(port: u16, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-XAtq",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Polls `check` (a condition on the database), up to ~10 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{what} never happened");
}

#[test]
fn postgres_app_gets_a_streaming_replica_in_a_new_region() {
    if !common::need::root_and_postgres() {
        return;
    }
    let app = App::launch();
    app.set_password();
    app.ok(&["volumes", "create", "pg_data", "--region", "syd", "--size", "1"]);
    app.ok(&["deploy", "--version", "v1"]);
    let primary = app.port("syd");
    psql(primary, "CREATE TABLE items (id int); INSERT INTO items SELECT generate_series(1, 100)");

    app.ok(&["volumes", "create", "pg_data", "--region", "lax", "--size", "1"]);
    app.ok(&["regions", "add", "lax"]);
    let replica = app.port("lax");
    // A standby accepts TCP (its health check) before it accepts queries.
    eventually("rows reaching the replica", || {
        try_psql(replica, "SELECT count(*) FROM pg_class WHERE relname = 'items'").is_ok_and(|n| n == "1")
    });
    assert_eq!(psql(replica, "SELECT count(*) FROM items"), "100");
    assert_eq!(psql(replica, "SELECT pg_is_in_recovery()"), "t");

    eventually("the replica catching up", || {
        let members = Value::Array(app.ok(&["pg", "status", "--json"]).rows());
        let lax = members.as_array().unwrap().iter().find(|m| m["region"] == "lax").unwrap().clone();
        let syd = members.as_array().unwrap().iter().find(|m| m["region"] == "syd").unwrap().clone();
        syd["role"] == "primary" && lax["role"] == "replica" && lax["streaming"] == "streaming" && lax["lag_bytes"] == 0
    });

    // An app in syd and lax whose lax instances read from this replica: after its
    // migration, lax waits for the replica to replay it (the migrations issue's rollout).
    let url = |port: u16| format!("postgres://postgres:{}@127.0.0.1:{port}/postgres", PASSWORD.replace('\'', "%27"));
    let web = common::Project::builder()
        .region("syd", 1)
        .region("lax", 1)
        .deploy_keys("  release_command = \"psql -X -q -v ON_ERROR_STOP=1 -d \\\"$DATABASE_URL\\\" -c 'CREATE TABLE IF NOT EXISTS web_runs (v text); INSERT INTO web_runs VALUES (1)'\"")
        .build();
    let config = web.path().join("fly.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("[ferry.regions.lax]\n", &format!("[ferry.regions.lax]\n  replica_url = \"{}\"\n", url(replica))),
    )
    .unwrap();
    let mut set =
        web.command(&["secrets", "set", "DATABASE_URL=-", "--stage", "-q"]).stdin(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(set.stdin.as_mut().unwrap(), url(primary).as_bytes()).unwrap();
    drop(set.stdin.take());
    assert!(set.wait().unwrap().success());
    let deployed = web.ferry(&["deploy", "--version", "w1", "--json"]);
    deployed.assert_ok();
    assert!(
        deployed.events().iter().any(|e| e["event"] == "replica_caught_up" && e["region"] == "lax"),
        "{}",
        deployed.stdout
    );

    let urls = app.ok(&["pg", "connect-url", "--region", "lax"]);
    assert!(
        urls.stdout.contains(&format!("read:  postgres://postgres:$POSTGRES_PASSWORD@127.0.0.1:{replica}/postgres")),
        "{}",
        urls.stdout
    );
    assert!(urls
        .stdout
        .contains(&format!("write: postgres://postgres:$POSTGRES_PASSWORD@127.0.0.1:{primary}/postgres")));
    assert!(!urls.stdout.contains("s3cret"));

    // A new version: the replica first, then the primary, one member at a time.
    let run = app.ok(&["deploy", "--version", "v2", "--json"]);
    let order: Vec<(String, String)> = run
        .events()
        .iter()
        .filter(|e| e["event"] == "instance_updating" || e["event"] == "instance_healthy")
        .map(|e| (e["event"].as_str().unwrap().to_string(), e["region"].as_str().unwrap().to_string()))
        .collect();
    let expected: Vec<(String, String)> = [
        ("instance_updating", "lax"),
        ("instance_healthy", "lax"),
        ("instance_updating", "syd"),
        ("instance_healthy", "syd"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_string(), (*b).to_string()))
    .collect();
    assert_eq!(order, expected);
    let lax = app.port("lax");
    eventually("the restarted replica answering", || {
        try_psql(lax, "SELECT count(*) FROM items").is_ok_and(|n| n == "100")
    });
    assert_eq!(psql(app.port("syd"), "SELECT count(*) FROM items"), "100");
}

#[test]
fn postgres_app_replicates_across_ssh_hosts() {
    if !common::need::root_and_postgres() {
        return;
    }
    let fleet = common::sshd::SshFleet::start(2);
    let mut app = App::launch();
    app.env.push(("FERRY_SSH_CONFIG".into(), fleet.ssh_config().display().to_string()));
    let config = app.dir.join("fly.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[ferry]\n", "[ferry]\n  target = \"ssh\"\n")
        .replace(
            "[ferry.regions.syd]\n",
            &format!("[ferry.regions.syd]\n  hosts = [\"{}\"]\n", fleet.hosts()[0].spec()),
        )
        .replace("PG_LISTEN = \"127.0.0.1\"", "PG_LISTEN = \"*\"")
        .replace("PG_REPLICA_NET = \"127.0.0.1/32\"", "PG_REPLICA_NET = \"127.0.0.0/8\"");
    std::fs::write(&config, text).unwrap();
    app.set_password();
    app.ok(&["volumes", "create", "pg_data", "--region", "syd", "--size", "1"]);
    app.ok(&["deploy", "--version", "v1"]);
    let primary = app.port("syd");
    psql(primary, "CREATE TABLE items (id int); INSERT INTO items SELECT generate_series(1, 10)");

    let lax = fleet.hosts()[1].spec();
    app.ok(&["volumes", "create", "pg_data", "--region", "lax", "--size", "1", "--host", &lax]);
    app.ok(&["regions", "add", "lax", "--host", &lax]);
    let replica = app.port("lax");
    eventually("rows on the replica host", || try_psql(replica, "SELECT count(*) FROM items").is_ok_and(|n| n == "10"));
    eventually("pg status over ssh", || {
        let members = Value::Array(app.ok(&["pg", "status", "--json"]).rows());
        members
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["region"] == "lax" && m["role"] == "replica" && m["streaming"] == "streaming")
    });
    let urls = app.ok(&["pg", "connect-url", "--region", "lax"]);
    assert!(urls.stdout.contains(&format!("@{}:{replica}/", fleet.hosts()[1].addr)), "{}", urls.stdout);
}
