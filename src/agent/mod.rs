//! ferry's agent: the small resident process of one host account (on the local
//! target, of this machine's) that supervises every instance of every app of the
//! account, runs their checks, and carries out what ferry asks of the host. The CLI
//! speaks to it with the typed requests of `host::proto`, over its Unix socket (or
//! through `ferry agent call` at the end of an SSH channel); the agent never decides a
//! rollout. Hidden subcommands:
//!
//! - `ferry agent run`: the agent itself (`daemon`).
//! - `ferry agent call`: relays one request from stdin to the agent, starting (or
//!   upgrading) it first.
//! - `ferry agent launch`: the few steps between the agent and an instance's command
//!   (a new session, an empty signal mask), then `exec`.
//! - `ferry agent boot`: what the host's boot mechanism runs: the agent, which brings
//!   back every instance that should run.
//! - `ferry agent keep`: the keeper of the front door's listening sockets, started by
//!   the agent (`keeper`).

mod backups;
pub mod boot;
pub mod client;
mod daemon;
pub mod files;
mod install;
mod keeper;
mod launch;
mod ops;
pub mod paths;
mod procs;
mod proxy;
mod release_command;
mod supervisor;
pub mod wire;

use std::path::PathBuf;
use std::sync::OnceLock;

pub use paths::Paths;

pub use supervisor::beam_node;

/// What a hidden `ferry agent` subcommand is asked to do.
#[derive(Debug, Clone)]
pub enum Role {
    Run { state: Option<PathBuf>, boot_entry: bool },
    Call,
    Launch,
    Boot { state: Option<PathBuf> },
    Keep { state: Option<PathBuf> },
    Exec { app_dir: String, instance: String, argv: Vec<String> },
}

/// Runs a hidden `ferry agent` subcommand; the process's exit code.
pub fn main(role: &Role) -> i32 {
    match role {
        Role::Run { state, boot_entry } => {
            let paths = state.as_deref().map_or_else(Paths::for_this_account, Paths::at);
            if *boot_entry {
                boot::install(&paths);
            }
            daemon::run(&paths)
        }
        Role::Boot { state } => daemon::run(&state.as_deref().map_or_else(Paths::for_this_account, Paths::at)),
        Role::Keep { state } => keeper::run(&state.as_deref().map_or_else(Paths::for_this_account, Paths::at)),
        Role::Call => client::relay(),
        Role::Launch => launch::run(),
        Role::Exec { app_dir, instance, argv } => launch::exec_in(app_dir, instance, argv),
    }
}

/// The soft limit on open files this process started with, as text for
/// `FERRY_LAUNCH_NOFILE`.
static NOFILE_AT_START: OnceLock<String> = OnceLock::new();

/// Raises this process's soft limit on open files to its hard limit (the front door
/// holds two per proxied connection: 1,024, a common default, is 500 clients). What
/// the agent starts gets the limit it started with back (`launch`).
pub fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    // Started by the keeper, which was started by an agent that had raised it: the
    // limit that agent began with.
    let at_start = std::env::var("FERRY_NOFILE_AT_START")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| limit.current.map_or_else(|| "unlimited".into(), |n| n.to_string()));
    let _ = NOFILE_AT_START.set(at_start);
    // An unlimited hard limit cannot be the soft one (the kernel caps open files at
    // fs.nr_open): left as it is then.
    if limit.maximum.is_some() && limit.current < limit.maximum {
        let _ = setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum });
    }
}

/// The soft limit on open files the agent started with, for what it starts.
pub fn nofile_at_start() -> &'static str {
    NOFILE_AT_START.get().map_or("", String::as_str)
}

/// Empties this thread's signal mask (before a runtime starts, its threads inherit
/// it; before an exec, the new program does): a blocked signal would never reach an
/// instance, and exec keeps the mask.
pub fn clear_signal_mask() {
    let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
}

/// The sha256 of this process's executable, computed once (and remembered across runs
/// by its inode and time, since an executable is large).
pub fn exe_digest() -> String {
    static DIGEST: OnceLock<String> = OnceLock::new();
    DIGEST
        .get_or_init(|| {
            let Ok(exe) = std::env::current_exe() else { return String::new() };
            digest_of(&exe)
        })
        .clone()
}

fn digest_of(exe: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(exe) else { return String::new() };
    let key = format!("{}-{}-{}-{}", meta.dev(), meta.ino(), meta.size(), meta.mtime());
    let cache = std::path::Path::new("/tmp").join(format!("ferry-{}-exe-{key}", paths::uid()));
    // Only a file this account wrote, that nobody else may change, is believed.
    let trusted = std::fs::symlink_metadata(&cache)
        .is_ok_and(|m| m.file_type().is_file() && m.uid() == paths::uid() && m.mode() & 0o022 == 0);
    if let (true, Ok(known)) = (trusted, std::fs::read_to_string(&cache)) {
        if known.len() == 64 {
            return known;
        }
    }
    let digest = crate::release::sha256_file(exe).unwrap_or_default();
    let _ = files::write_atomic(&cache, digest.as_bytes(), 0o600);
    digest
}
