//! A real PostgreSQL primary and streaming replica for tests, on loopback ports, run as
//! the unprivileged `postgres` user in temporary directories, stopped afterwards.
//! Installs Debian's `postgresql` package when it is missing (root only).

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub const APP_PASSWORD: &str = "pw-Zq7!x$y";

fn bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let find = || {
            fs::read_dir("/usr/lib/postgresql").ok()?.flatten().map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).max()
        };
        if let Some(bin) = find() {
            return bin;
        }
        let ok = Command::new("sh")
            .arg("-c")
            .arg("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client")
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "postgresql is needed and could not be installed");
        find().expect("initdb after installing postgresql")
    })
}

/// Runs a PostgreSQL tool as the `postgres` user.
fn as_postgres(tool: &str, args: &[&str]) -> Output {
    let program = bin().join(tool);
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(&program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port()
}

pub struct Postgres {
    dir: tempfile::TempDir,
    pub primary_port: u16,
    pub replica_port: u16,
}

impl Postgres {
    /// A primary with database `appdb` owned by `app` (password [`APP_PASSWORD`]), and a
    /// streaming hot-standby replica cloned from it with `pg_basebackup -R`.
    pub fn start() -> Postgres {
        bin();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        Command::new("chown").arg("postgres:postgres").arg(root).status().unwrap();
        let (primary_port, replica_port) = (free_port(), free_port());
        let primary = root.join("primary");
        as_postgres(
            "initdb",
            &["-D", primary.to_str().unwrap(), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"],
        );
        fs::write(
            primary.join("pg_hba.conf"),
            "local all all trust\nhost replication postgres 127.0.0.1/32 trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        let pg = Postgres { dir, primary_port, replica_port };
        pg.start_server("primary", primary_port);
        Self::psql(primary_port, "postgres", &format!("CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'"));
        Self::psql(primary_port, "postgres", "CREATE DATABASE appdb OWNER app");
        let replica = pg.dir.path().join("replica");
        as_postgres(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary_port.to_string(),
                "-U",
                "postgres",
                "-D",
                replica.to_str().unwrap(),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ],
        );
        pg.start_server("replica", replica_port);
        pg
    }

    fn start_server(&self, name: &str, port: u16) {
        let data = self.dir.path().join(name);
        let log = self.dir.path().join(format!("{name}.log"));
        let options = format!("-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off", self.dir.path().display());
        as_postgres(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-o", &options, "-w", "start"],
        );
    }

    /// `postgres://app:PASSWORD@127.0.0.1:PORT/appdb` for the primary.
    pub fn url(&self) -> String {
        format!(
            "postgres://app:{}@127.0.0.1:{}/appdb",
            APP_PASSWORD.replace('!', "%21").replace('$', "%24"),
            self.primary_port
        )
    }

    pub fn replica_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/appdb", self.replica_port)
    }

    /// Runs SQL as the superuser and returns the unaligned, tuples-only output.
    pub fn psql(port: u16, db: &str, sql: &str) -> String {
        let out = as_postgres(
            "psql",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-XAtq",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn primary(&self, sql: &str) -> String {
        Self::psql(self.primary_port, "appdb", sql)
    }

    pub fn replica(&self, sql: &str) -> String {
        Self::psql(self.replica_port, "appdb", sql)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        for name in ["replica", "primary"] {
            let data = self.dir.path().join(name);
            if data.join("postmaster.pid").exists() {
                let _ = Command::new("runuser")
                    .args(["-u", "postgres", "--"])
                    .arg(bin().join("pg_ctl"))
                    .args(["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}
