//! What a test needs that a machine may lack: root (sshd hosts and PostgreSQL run as
//! their own users) and PostgreSQL's binaries. A test that cannot run never passes
//! silently: it fails and says how to run it, unless `FERRY_TEST_SKIP_UNAVAILABLE` is
//! set, when it prints a `SKIPPED` line naming itself and what it lacks.

// Each test binary uses a part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// True when the test can run as root; otherwise fails it with how to run it, or (with
/// `FERRY_TEST_SKIP_UNAVAILABLE`) says it is skipped and returns false.
pub fn root() -> bool {
    let missing = (!is_root()).then_some("root (its hosts are users of this machine)");
    available(&missing.into_iter().collect::<Vec<_>>())
}

/// As [`root`], and PostgreSQL's server binaries too.
pub fn root_and_postgres() -> bool {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (PostgreSQL runs as its own user)");
    }
    if !Path::new("/usr/lib/postgresql").exists() {
        missing.push("PostgreSQL's binaries (Debian's `postgresql` package)");
    }
    available(&missing)
}

/// As [`root`], and cron's `crontab` too (the agent's boot entry).
pub fn root_and_cron() -> bool {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (its hosts are users of this machine)");
    }
    if !Command::new("sh").args(["-c", "command -v crontab"]).output().is_ok_and(|o| o.status.success()) {
        missing.push("cron (Debian's `cron` package)");
    }
    available(&missing)
}

/// Elixir's `mix` and Erlang/OTP (Debian's `elixir` package), to build a real release.
pub fn elixir() -> bool {
    let has = |tool: &str| {
        Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
    };
    let missing = (!(has("mix") && has("erl"))).then_some("Elixir and Erlang/OTP (Debian's `elixir` package)");
    available(&missing.into_iter().collect::<Vec<_>>())
}

fn available(missing: &[&str]) -> bool {
    if missing.is_empty() {
        return true;
    }
    let test = std::thread::current().name().unwrap_or("this test").to_string();
    let why = format!("{test} needs {}", missing.join(" and "));
    if std::env::var_os("FERRY_TEST_SKIP_UNAVAILABLE").is_some() {
        eprintln!("SKIPPED: {why}");
        return false;
    }
    panic!(
        "{why}: run the tests as root on Debian (as `.ci/run` does: it installs openssh-server and postgresql), \
         or set FERRY_TEST_SKIP_UNAVAILABLE=1 to skip such tests, each named in a SKIPPED line"
    );
}
