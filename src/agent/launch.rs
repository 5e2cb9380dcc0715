//! `ferry agent launch`: what runs between the agent and a command it starts (an
//! instance, a release_command). In a new session and process group of its own, with
//! an empty signal mask, from the directory it is given, it becomes the command
//! (`exec`): the pid the agent recorded is the command's own.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Never returns when the command starts; 127 when it cannot.
pub fn run() -> i32 {
    let cwd = std::env::var_os("FERRY_LAUNCH_CWD").unwrap_or_else(|| ".".into());
    let argv: Vec<String> =
        std::env::var("FERRY_LAUNCH_ARGV").ok().and_then(|a| serde_json::from_str(&a).ok()).unwrap_or_default();
    let Some((program, rest)) = argv.split_first() else {
        eprintln!("ferry: nothing to start (empty start command)");
        return 127;
    };
    let _ = rustix::process::setsid();
    super::clear_signal_mask();
    // The limit on open files the agent started with (it raised its own).
    if let Some(soft) = std::env::var("FERRY_LAUNCH_NOFILE").ok().filter(|s| !s.is_empty()) {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let limit = getrlimit(Resource::Nofile);
        let current = if soft == "unlimited" { None } else { soft.parse().ok() };
        if current.is_some() || soft == "unlimited" {
            let _ = setrlimit(Resource::Nofile, Rlimit { current, maximum: limit.maximum });
        }
    }
    let error = Command::new(program)
        .args(rest)
        .current_dir(&cwd)
        .env_remove("FERRY_LAUNCH_CWD")
        .env_remove("FERRY_LAUNCH_ARGV")
        .env_remove("FERRY_LAUNCH_NOFILE")
        .exec();
    eprintln!("ferry: cannot start `{program}`: {error}");
    127
}
