//! Where the agent of a host account keeps its files: one state directory per account
//! (`$FERRY_STATE_DIR`, else `$XDG_STATE_HOME/ferry`, else `~/.local/state/ferry`),
//! outside every app's directory, and its control socket in a short private
//! directory (`/tmp/ferry-<uid>-<hash>/`, mode 0700): Unix socket paths stop at 107
//! bytes, so it never lives under a project or home tree.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The agent's files, for one host account.
#[derive(Debug, Clone)]
pub struct Paths {
    pub state: PathBuf,
}

impl Paths {
    /// The state directory of the account this process runs as.
    pub fn for_this_account() -> Paths {
        let state = std::env::var_os("FERRY_STATE_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()).map(|d| PathBuf::from(d).join("ferry"))
            })
            .unwrap_or_else(|| home().join(".local").join("state").join("ferry"));
        Paths { state: absolute(&state) }
    }

    /// The state directory named on the command line (`agent boot --state DIR`).
    pub fn at(state: &Path) -> Paths {
        Paths { state: absolute(state) }
    }

    /// Held (flock) by the running agent for its whole life: one agent per account.
    pub fn agent_lock(&self) -> PathBuf {
        self.state.join("agent.lock")
    }

    /// Held while an agent is being started, so two callers start one.
    pub fn start_lock(&self) -> PathBuf {
        self.state.join("start.lock")
    }

    /// Who the running agent is: pid, version, executable digest.
    pub fn agent_info(&self) -> PathBuf {
        self.state.join("agent.json")
    }

    /// The app directories the agent serves, one per line.
    pub fn apps(&self) -> PathBuf {
        self.state.join("apps")
    }

    /// What the agent says about itself (start, upgrade, adoption, exit).
    pub fn log(&self) -> PathBuf {
        self.state.join("agent.log")
    }

    /// The private directory of the control socket: in `/tmp` whatever `TMPDIR` says
    /// (the agent started at boot and an SSH session must agree), named after the
    /// account and the state directory. A name someone else took is passed over, the
    /// same way by the agent and its callers.
    pub fn socket_dir(&self) -> PathBuf {
        let digest = Sha256::digest(self.state.as_os_str().as_encoded_bytes());
        let short = digest.iter().take(4).fold(String::new(), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        });
        let me = uid();
        let candidate = |n: u32| {
            let suffix = if n == 0 { String::new() } else { format!("-{n}") };
            PathBuf::from("/tmp").join(format!("ferry-{me}-{short}{suffix}"))
        };
        (0..8)
            .map(candidate)
            .find(|dir| match std::fs::symlink_metadata(dir) {
                Ok(meta) => meta.is_dir() && meta.uid() == me,
                Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            })
            .unwrap_or_else(|| candidate(0))
    }

    pub fn socket(&self) -> PathBuf {
        self.socket_dir().join("agent.sock")
    }

    /// Creates the state directory and the socket's directory, private to this
    /// account; refuses a socket directory that is someone else's or open to others.
    pub fn prepare(&self) -> std::io::Result<()> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.state)?;
        let dir = self.socket_dir();
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let meta = std::fs::symlink_metadata(&dir)?;
        if !meta.is_dir() || meta.uid() != uid() {
            return Err(std::io::Error::other(format!("`{}` is not a directory of this account", dir.display())));
        }
        if meta.mode() & 0o077 != 0 {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }
}

/// The home directory of this account.
pub fn home() -> PathBuf {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

/// `~/x` made absolute against `$HOME`.
pub fn expand_home(path: &str) -> PathBuf {
    match path.strip_prefix("~/") {
        Some(rest) => home().join(rest),
        None if path == "~" => home(),
        None => PathBuf::from(path),
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// This process's user id (from `/proc/self`, which belongs to it).
pub fn uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(0, |m| m.uid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_path_stays_short_whatever_the_state_directory() {
        let deep = Path::new("/home/someone/projects/a-company-with-a-long-name/services/billing/.ferry/state/x");
        let paths = Paths::at(deep);
        assert!(paths.socket().as_os_str().len() < 100, "{}", paths.socket().display());
        assert_ne!(paths.socket(), Paths::at(Path::new("/other")).socket(), "each state directory has its own");
    }

    #[test]
    fn home_is_expanded() {
        assert_eq!(expand_home("~/ferry"), home().join("ferry"));
        assert_eq!(expand_home("/srv/ferry"), PathBuf::from("/srv/ferry"));
    }
}
