//! The SSH transport: the system OpenSSH through the `openssh` crate, one multiplexed
//! master connection per host (so `~/.ssh/config`, the agent, ProxyJump and keys work
//! as they do for `ssh`). Host keys are checked strictly against known_hosts; with
//! `accept_new` an unknown key is added on first contact, a changed key never is.
//! Commands arrive as [`Cmd`]s and are quoted by [`Cmd::to_shell`] only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use std::os::unix::process::ExitStatusExt as _;

use openssh::{ForwardType, KnownHosts, Session, SessionBuilder, Socket};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex, OnceCell};

use super::{Cmd, FileInput, Output, TransportError};

/// How ferry connects: shared by every host of a command.
#[derive(Debug, Clone, Default)]
pub struct SshOptions {
    /// Accept (and record) unknown host keys on first contact; changed keys are
    /// still refused.
    pub accept_new_host_keys: bool,
    /// An ssh_config file to use instead of `~/.ssh/config`.
    pub config_file: Option<PathBuf>,
}

/// How long a master connection outlives the ferry run that opened it, idle: a
/// command run soon after another (a deploy, then `status`, then a rollback) skips
/// the handshakes, as with OpenSSH's own `ControlPersist`.
const PERSIST_SECS: u32 = 60;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const ALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// Where sockets go: a short path whatever `TMPDIR` says.
const SHORT_TMP: &str = "/tmp";

/// Where master connections are kept between runs: a directory only this user can
/// enter. `None` (each run connects afresh) when `FERRY_SSH_PERSIST=0` or when the
/// directory is not safely this user's own.
fn persist_dir() -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if std::env::var_os("FERRY_SSH_PERSIST").is_some_and(|v| v == "0") {
        return None;
    }
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    // `/tmp`, not `TMPDIR`: a control socket's path must stay within the 107 bytes a
    // Unix socket allows, and ssh adds a random suffix to it while it binds.
    let dir = Path::new(SHORT_TMP).join(format!("ferry-ssh-{uid}"));
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(_) => return None,
    }
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    // No permission bit for group or others.
    let private = meta.mode().trailing_zeros() >= 6;
    (meta.is_dir() && meta.uid() == uid && private).then_some(dir)
}

#[derive(Debug, Clone)]
pub struct SshTransport {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// As written in fly.toml: `user@host`, `user@host:port` or an ssh_config alias.
    spec: String,
    options: SshOptions,
    session: OnceCell<Arc<Session>>,
    forwards: Mutex<HashMap<(String, u16), SocketAddr>>,
    /// The control socket of a master that outlives this run, if that is what the
    /// session uses.
    persisted: std::sync::OnceLock<PathBuf>,
    /// Where ferry's executable is on the host, once found (or put there).
    agent: OnceCell<String>,
}

impl Drop for Inner {
    /// A master that stays up must not keep this run's port forwards listening:
    /// they are cancelled (the master's own ones go when it exits).
    fn drop(&mut self) {
        let Some(ctl) = self.persisted.get() else { return };
        for ((host, port), local) in self.forwards.get_mut().drain() {
            let _ = std::process::Command::new("ssh")
                .arg("-S")
                .arg(ctl)
                .args(["-O", "cancel", "-L"])
                .arg(format!("{local}:{host}:{port}"))
                .arg("ferry-master")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

const UPLOAD: &str = include_str!("scripts/upload.sh");

/// The line sshd hands to the login shell: `exec` first, so the login shell becomes
/// the command instead of forking it (one process less per round trip).
fn remote_line(cmd: &Cmd) -> String {
    format!("exec {}", cmd.to_shell())
}

impl SshTransport {
    pub fn new(spec: &str, options: SshOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                spec: spec.to_string(),
                options,
                session: OnceCell::new(),
                forwards: Mutex::new(HashMap::new()),
                persisted: std::sync::OnceLock::new(),
                agent: OnceCell::new(),
            }),
        }
    }

    pub fn host(&self) -> &str {
        &self.inner.spec
    }

    /// Where ferry's executable is on the host: found (or put there) by `find` the
    /// first time, once per run.
    pub async fn agent_path<F, Fut, E>(&self, find: F) -> Result<String, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<String, E>>,
    {
        self.inner.agent.get_or_try_init(find).await.cloned()
    }

    /// Closes every port forward this transport opened, all at once, through the
    /// master connection (a master kept for later runs must not keep them listening).
    /// What is left (a failed close) is cancelled when the transport is dropped.
    pub async fn close_forwards(&self) {
        let Some(session) = self.inner.session.get().cloned() else { return };
        let forwards: Vec<((String, u16), SocketAddr)> = self.inner.forwards.lock().await.drain().collect();
        let mut closing = tokio::task::JoinSet::new();
        for ((host, port), local) in forwards {
            let (session, inner) = (Arc::clone(&session), Arc::clone(&self.inner));
            closing.spawn(async move {
                let remote = Socket::TcpSocket { host: host.clone().into(), port };
                if session.close_port_forward(ForwardType::Local, Socket::from(local), remote).await.is_err() {
                    inner.forwards.lock().await.insert((host, port), local);
                }
            });
        }
        while closing.join_next().await.is_some() {}
    }

    /// `user@host:port` becomes `ssh://user@host:port` (which the builder splits into
    /// options); anything else is handed to ssh as written.
    fn destination(&self) -> String {
        let spec = &self.inner.spec;
        match spec.rsplit_once(':') {
            Some((_, port)) if port.parse::<u16>().is_ok() => format!("ssh://{spec}"),
            _ => spec.clone(),
        }
    }

    async fn session(&self) -> Result<Arc<Session>, TransportError> {
        self.inner
            .session
            .get_or_try_init(|| async {
                if let Some(dir) = persist_dir() {
                    return self.persistent_session(&dir).await.map(Arc::new);
                }
                let mut builder = SessionBuilder::default();
                builder
                    .known_hosts_check(if self.inner.options.accept_new_host_keys {
                        KnownHosts::Add
                    } else {
                        KnownHosts::Strict
                    })
                    .connect_timeout(CONNECT_TIMEOUT)
                    .server_alive_interval(ALIVE_INTERVAL)
                    .control_directory(SHORT_TMP);
                if let Some(config) = &self.inner.options.config_file {
                    builder.config_file(config);
                }
                builder.connect_mux(self.destination()).await.map(Arc::new).map_err(|e| self.connect_error(&e))
            })
            .await
            .cloned()
    }

    /// The master connection in `dir` for this host and these options: the one a
    /// recent ferry run left (it lives on for [`PERSIST_SECS`] idle), else a new one.
    /// A lock file keeps two ferry runs from starting two masters for one host.
    async fn persistent_session(&self, dir: &Path) -> Result<Session, TransportError> {
        let name = self.control_name();
        let ctl = dir.join(&name);
        let lock = std::fs::File::create(dir.join(format!("{name}.lock"))).map_err(|e| self.io_lost(&e))?;
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT * 2;
        while let Err(std::fs::TryLockError::WouldBlock) = lock.try_lock() {
            if tokio::time::Instant::now() > deadline {
                return Err(self.io_lost(&std::io::Error::other("another ferry run is still connecting to this host")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if ctl.exists() {
            let session = Session::resume_mux(ctl.clone().into_boxed_path(), None);
            if session.check().await.is_ok() {
                let _ = self.inner.persisted.set(ctl);
                return Ok(session);
            }
            let _ = std::fs::remove_file(&ctl);
        }
        let log = dir.join(format!("{name}.log"));
        let mut command = tokio::process::Command::new("ssh");
        command
            .arg("-E")
            .arg(&log)
            .arg("-S")
            .arg(&ctl)
            .args(["-M", "-f", "-N", "-T"])
            .args(["-o", &format!("ControlPersist={PERSIST_SECS}")])
            .args(["-o", "BatchMode=yes"])
            .args([
                "-o",
                if self.inner.options.accept_new_host_keys {
                    "StrictHostKeyChecking=accept-new"
                } else {
                    "StrictHostKeyChecking=yes"
                },
            ])
            .args(["-o", &format!("ConnectTimeout={}", CONNECT_TIMEOUT.as_secs())])
            .args(["-o", &format!("ServerAliveInterval={}", ALIVE_INTERVAL.as_secs())]);
        if let Some(config) = &self.inner.options.config_file {
            command.arg("-F").arg(config);
        }
        let _ = std::fs::remove_file(&log);
        let status = command
            .arg(self.destination())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await
            .map_err(|e| self.io_lost(&e))?;
        if !status.success() {
            let message = std::fs::read_to_string(&log).unwrap_or_default();
            let message = message.trim();
            return Err(self.classify(if message.is_empty() {
                format!("ssh exited with {status}")
            } else {
                message.to_string()
            }));
        }
        let session = Session::resume_mux(ctl.clone().into_boxed_path(), None);
        session.check().await.map_err(|e| self.connect_error(&e))?;
        let _ = self.inner.persisted.set(ctl);
        Ok(session)
    }

    /// The control socket's name: the host and every option that changes how it
    /// was reached, so a master is only ever reused for the same connection.
    fn control_name(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        hash.update(self.inner.spec.as_bytes());
        hash.update([0]);
        if let Some(config) = &self.inner.options.config_file {
            hash.update(config.as_os_str().as_encoded_bytes());
        }
        hash.update([0, u8::from(self.inner.options.accept_new_host_keys)]);
        hash.finalize().iter().take(8).fold(String::new(), |mut name, b| {
            use std::fmt::Write as _;
            let _ = write!(name, "{b:02x}");
            name
        })
    }

    pub async fn connect(&self) -> Result<(), TransportError> {
        self.session().await.map(drop)
    }

    fn connect_error(&self, error: &openssh::Error) -> TransportError {
        let mut message = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        self.classify(message)
    }

    /// A failed connection, told apart: a changed or unknown host key, or the rest.
    fn classify(&self, message: String) -> TransportError {
        let host = self.inner.spec.clone();
        if message.contains("IDENTIFICATION HAS CHANGED") || message.contains("Host key for") {
            return TransportError::HostKey {
                host,
                message: "its host key has CHANGED since it was recorded in known_hosts".into(),
                hint: "if the host was really reinstalled, remove the old key with `ssh-keygen -R HOST` and connect again; otherwise someone may be intercepting the connection".into(),
            };
        }
        if message.contains("Host key verification failed")
            || message.contains("No ED25519 host key")
            || message.contains("host key is known")
        {
            return TransportError::HostKey {
                host,
                message: "its host key is not in known_hosts".into(),
                hint: "check the key and add it (`ssh-keyscan -p PORT HOST >> ~/.ssh/known_hosts`), or run once with `--accept-new-host-keys` to trust it on first contact".into(),
            };
        }
        TransportError::Connection { host, message }
    }

    fn lost(&self, error: &openssh::Error) -> TransportError {
        TransportError::Connection { host: self.inner.spec.clone(), message: error.to_string() }
    }

    /// Spawns `cmd` on the host with piped output, and a piped stdin when it has
    /// input; the caller feeds it through `feed`.
    async fn spawn(&self, cmd: &Cmd, input: bool) -> Result<openssh::Child<Arc<Session>>, TransportError> {
        let session = self.session().await?;
        let mut command = Session::to_raw_command(session, remote_line(cmd));
        command
            .stdin(if input { openssh::Stdio::piped() } else { openssh::Stdio::null() })
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::piped());
        command.spawn().await.map_err(|e| self.lost(&e))
    }

    /// Runs `cmd` to completion on its stdin, then `file`; returns its output and
    /// the file bytes sent.
    pub async fn run(&self, cmd: &Cmd, file: Option<&FileInput<'_>>) -> Result<(Output, u64), TransportError> {
        let mut child = self.spawn(cmd, cmd.stdin.is_some() || file.is_some()).await?;
        let stdin = child.stdin().take();
        let (fed, out) = tokio::join!(super::feed(stdin, cmd.stdin.as_deref(), file), child.wait_with_output());
        let out = out.map_err(|e| self.lost(&e))?;
        let sent = fed.map_err(|e| match file {
            Some(input) => TransportError::copying(&self.inner.spec, input.path.display(), "the host")(e),
            None => self.io_lost(&e),
        })?;
        Ok((Output { status: out.status, stdout: out.stdout, stderr: out.stderr }, sent))
    }

    /// Runs `cmd` with this terminal's streams (a pseudo-terminal on the host with
    /// `tty`, when this side has one), over the host's master connection; its exit code.
    pub async fn interactive(&self, cmd: &Cmd, tty: bool) -> Result<i32, TransportError> {
        let session = self.session().await?;
        let status = tokio::process::Command::new("ssh")
            .arg("-S")
            .arg(session.control_socket())
            .arg(if tty { "-t" } else { "-T" })
            .args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR"])
            .arg("ferry-master")
            .arg(remote_line(cmd))
            .status()
            .await
            .map_err(|e| self.io_lost(&e))?;
        // ssh says 255 for its own failures; the master was up a moment ago.
        Ok(status.code().unwrap_or(128 + status.signal().unwrap_or(0)))
    }

    fn io_lost(&self, error: &std::io::Error) -> TransportError {
        TransportError::Connection { host: self.inner.spec.clone(), message: error.to_string() }
    }

    pub async fn exec_streaming(
        &self,
        cmd: &Cmd,
        on_line: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<ExitStatus, TransportError> {
        let mut child = self.spawn(cmd, cmd.stdin.is_some()).await?;
        let (Some(stdout), Some(stderr)) = (child.stdout().take(), child.stderr().take()) else {
            return Err(self.io_lost(&std::io::Error::other("no output pipes")));
        };
        let stdin = child.stdin().take();
        let (fed, ()) =
            tokio::join!(super::feed(stdin, cmd.stdin.as_deref(), None), super::pump_lines(stdout, stderr, on_line));
        let status = child.wait().await.map_err(|e| self.lost(&e))?;
        fed.map_err(|e| self.io_lost(&e))?;
        Ok(status)
    }

    /// Streams `src` into `dest` on the host (written beside it, then renamed).
    pub async fn upload(
        &self,
        src: &Path,
        dest: &str,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, TransportError> {
        let err = TransportError::copying(&self.inner.spec, src.display(), dest);
        let input = FileInput { path: src, progress };
        let (out, sent) = self.run(&Cmd::script(UPLOAD).args([dest, "644", ""]), Some(&input)).await?;
        if !out.status.success() {
            return Err(err(std::io::Error::other(out.stderr_str().trim().to_string())));
        }
        Ok(sent)
    }

    /// Runs `cmd` on its stdin, then `file` when given, handing each stdout line to
    /// `on_line` as it arrives; returns the exit status and what it wrote to stderr.
    pub async fn run_lines(
        &self,
        cmd: &Cmd,
        file: Option<&FileInput<'_>>,
        on_line: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(ExitStatus, String), TransportError> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
        let mut child = self.spawn(cmd, cmd.stdin.is_some() || file.is_some()).await?;
        let (Some(stdout), Some(mut stderr)) = (child.stdout().take(), child.stderr().take()) else {
            return Err(self.io_lost(&std::io::Error::other("no output pipes")));
        };
        let stdin = child.stdin().take();
        let lines = async {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                on_line(&line);
            }
        };
        let errors = async {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        };
        let (fed, (), errors) = tokio::join!(super::feed(stdin, cmd.stdin.as_deref(), file), lines, errors);
        let status = child.wait().await.map_err(|e| self.lost(&e))?;
        fed.map_err(|e| self.io_lost(&e))?;
        Ok((status, errors))
    }

    /// A local address forwarded through the master connection to `port` on the
    /// host's loopback; opened once per port and reused.
    pub async fn forward(&self, port: u16) -> Result<SocketAddr, TransportError> {
        self.forward_to("127.0.0.1", port).await
    }

    /// A local address forwarded to `host:port` as the remote machine reaches it.
    pub async fn forward_to(&self, host: &str, port: u16) -> Result<SocketAddr, TransportError> {
        let mut forwards = self.inner.forwards.lock().await;
        let key = (host.to_string(), port);
        if let Some(addr) = forwards.get(&key) {
            return Ok(*addr);
        }
        let session = self.session().await?;
        let local =
            std::net::TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()).map_err(|e| self.io_lost(&e))?;
        let remote = Socket::TcpSocket { host: host.to_string().into(), port };
        session
            .request_port_forward(ForwardType::Local, Socket::from(local), remote)
            .await
            .map_err(|e| self.lost(&e))?;
        forwards.insert(key, local);
        Ok(local)
    }

    /// Copies `src` on the host to a local file, streamed.
    pub async fn download(&self, src: &str, dest: &Path) -> Result<u64, TransportError> {
        let err = TransportError::copying(&self.inner.spec, src, dest.display());
        let session = self.session().await?;
        let cmd = Cmd::script("p=$1; case $p in \"~/\"*) p=\"$HOME/${p#\"~/\"}\";; esac; exec cat \"$p\"").arg(src);
        let mut command = Session::to_raw_command(session, remote_line(&cmd));
        command.stdin(openssh::Stdio::null()).stdout(openssh::Stdio::piped()).stderr(openssh::Stdio::null());
        let mut child = command.spawn().await.map_err(|e| self.lost(&e))?;
        let Some(mut stdout) = child.stdout().take() else {
            return Err(self.io_lost(&std::io::Error::other("no stdout pipe")));
        };
        let mut file = tokio::fs::File::create(dest).await.map_err(&err)?;
        let bytes = tokio::io::copy(&mut stdout, &mut file).await.map_err(&err)?;
        file.flush().await.map_err(&err)?;
        let status = child.wait().await.map_err(|e| self.lost(&e))?;
        if !status.success() {
            return Err(err(std::io::Error::other(format!("`cat {src}` failed"))));
        }
        Ok(bytes)
    }
}
