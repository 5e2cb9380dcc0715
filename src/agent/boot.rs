//! Bringing the agent back after a reboot, with the host's own mechanism: a systemd
//! user unit where `systemctl --user` works (lingering asked for, so it starts without
//! a login), else an `@reboot` line in the account's crontab, else nothing, which
//! `ferry status` warns about. What either runs is `ferry agent boot --state DIR`: the
//! agent, which starts every instance that should run.

use std::path::Path;
use std::process::{Command, Stdio};

use super::paths::Paths;

/// The mechanism in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    Systemd,
    Cron,
    None,
}

impl Boot {
    pub fn as_str(self) -> &'static str {
        match self {
            Boot::Systemd => "systemd",
            Boot::Cron => "cron",
            Boot::None => "none",
        }
    }
}

/// The command the boot mechanism runs.
pub fn command(exe: &Path, paths: &Paths) -> String {
    format!(
        "{} agent boot --state {}",
        crate::transport::quote(&exe.display().to_string()),
        crate::transport::quote(&paths.state.display().to_string())
    )
}

/// The marker that identifies ferry's line in a crontab.
const CRON_MARK: &str = "# ferry agent";

/// Installs (or refreshes) the boot entry for this executable; records which one.
pub fn install(paths: &Paths) -> Boot {
    let Ok(exe) = std::env::current_exe() else { return Boot::None };
    let line = command(&exe, paths);
    let boot = if systemd_user_works() && systemd(&line).is_ok() {
        Boot::Systemd
    } else if cron(&line, &paths.state.display().to_string()).is_ok() {
        Boot::Cron
    } else {
        Boot::None
    };
    let _ = std::fs::write(paths.state.join("boot"), boot.as_str());
    boot
}

/// The boot mechanism recorded by the last agent start.
pub fn recorded(paths: &Paths) -> Option<String> {
    std::fs::read_to_string(paths.state.join("boot")).ok().map(|s| s.trim().to_string())
}

fn quiet(command: &mut Command) -> std::io::Result<std::process::Output> {
    command.stdin(Stdio::null()).output()
}

fn systemd_user_works() -> bool {
    quiet(Command::new("systemctl").args(["--user", "show-environment"])).is_ok_and(|o| o.status.success())
}

fn systemd(line: &str) -> std::io::Result<()> {
    let dir = super::paths::home().join(".config/systemd/user");
    std::fs::create_dir_all(&dir)?;
    // The agent runs in the foreground; `KillMode=process` because its instances live
    // in the unit's cgroup and must outlive an agent that exits idle or hands over.
    // systemd expands `%` and `$` in ExecStart: both are doubled.
    let unit = format!(
        "[Unit]\nDescription=ferry's agent: keeps this account's instances running\n\n[Service]\nType=simple\nExecStart={}\nKillMode=process\nRestart=on-failure\n\n[Install]\nWantedBy=default.target\n",
        line.replace('%', "%%").replace('$', "$$")
    );
    std::fs::write(dir.join("ferry-agent.service"), unit)?;
    let enabled = quiet(Command::new("systemctl").args(["--user", "enable", "ferry-agent.service"]))?;
    if !enabled.status.success() {
        return Err(std::io::Error::other(String::from_utf8_lossy(&enabled.stderr).into_owned()));
    }
    // Without lingering the unit starts only when the account logs in: then it is no
    // boot entry, and cron is tried instead.
    let _ = quiet(Command::new("loginctl").arg("enable-linger"));
    let uid = super::paths::uid().to_string();
    let linger = quiet(Command::new("loginctl").args(["show-user", &uid, "--property=Linger"]))?;
    if String::from_utf8_lossy(&linger.stdout).trim() != "Linger=yes" {
        let _ = quiet(Command::new("systemctl").args(["--user", "disable", "ferry-agent.service"]));
        return Err(std::io::Error::other("lingering is not allowed for this account"));
    }
    Ok(())
}

/// Puts ferry's `@reboot` line for `state` in the account's crontab, replacing the one
/// an earlier ferry wrote for the same state directory and leaving every other line
/// as it was.
fn cron(line: &str, state: &str) -> std::io::Result<()> {
    let listed = quiet(Command::new("crontab").arg("-l"))?;
    let current = if listed.status.success() {
        String::from_utf8_lossy(&listed.stdout).into_owned()
    } else if ["no crontab", "No such file"].iter().any(|m| String::from_utf8_lossy(&listed.stderr).contains(m)) {
        // Debian's cron says "no crontab for USER"; BusyBox, that the file is missing.
        String::new()
    } else {
        // Unreadable for another reason: writing now could lose the account's lines.
        return Err(std::io::Error::other(String::from_utf8_lossy(&listed.stderr).into_owned()));
    };
    // cron reads `%` as a newline.
    let entry = format!("@reboot {} {CRON_MARK}", line.replace('%', "\\%"));
    if current.lines().any(|l| l == entry) {
        return Ok(());
    }
    let state_word = crate::transport::quote(state);
    let ours =
        |l: &str| l.starts_with("@reboot ") && l.ends_with(CRON_MARK) && l.contains(&format!("--state {state_word} "));
    let mut updated: String = current.lines().filter(|l| !ours(l)).flat_map(|l| [l, "\n"]).collect();
    updated.push_str(&entry);
    updated.push('\n');
    let mut child =
        Command::new("crontab").arg("-").stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        std::io::Write::write_all(&mut stdin, updated.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()))
    }
}
