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

use openssh::{ForwardType, KnownHosts, Session, SessionBuilder, Socket};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex, OnceCell};

use super::{Cmd, Output, TransportError};

/// How ferry connects: shared by every host of a command.
#[derive(Debug, Clone, Default)]
pub struct SshOptions {
    /// Accept (and record) unknown host keys on first contact; changed keys are
    /// still refused.
    pub accept_new_host_keys: bool,
    /// An ssh_config file to use instead of `~/.ssh/config`.
    pub config_file: Option<PathBuf>,
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
}

const UPLOAD: &str = r#"set -eu
p=$1
case $p in "~/"*) p="$HOME/${p#"~/"}";; esac
mkdir -p "$(dirname "$p")"
trap 'rm -f "$p.part.$$"' EXIT
cat > "$p.part.$$"
mv "$p.part.$$" "$p"
"#;

impl SshTransport {
    pub fn new(spec: &str, options: SshOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                spec: spec.to_string(),
                options,
                session: OnceCell::new(),
                forwards: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn host(&self) -> &str {
        &self.inner.spec
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
                let mut builder = SessionBuilder::default();
                builder
                    .known_hosts_check(if self.inner.options.accept_new_host_keys {
                        KnownHosts::Add
                    } else {
                        KnownHosts::Strict
                    })
                    .connect_timeout(Duration::from_secs(10))
                    .server_alive_interval(Duration::from_secs(5))
                    .control_directory(std::env::temp_dir());
                if let Some(config) = &self.inner.options.config_file {
                    builder.config_file(config);
                }
                builder.connect_mux(self.destination()).await.map(Arc::new).map_err(|e| self.connect_error(&e))
            })
            .await
            .cloned()
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

    /// Spawns `cmd` on the host with piped output; its stdin is fed by the caller
    /// through `feed`.
    async fn spawn(&self, cmd: &Cmd) -> Result<openssh::Child<Arc<Session>>, TransportError> {
        let session = self.session().await?;
        let mut command = Session::to_raw_command(session, cmd.to_shell());
        command
            .stdin(if cmd.stdin.is_some() { openssh::Stdio::piped() } else { openssh::Stdio::null() })
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::piped());
        command.spawn().await.map_err(|e| self.lost(&e))
    }

    pub async fn exec(&self, cmd: &Cmd) -> Result<Output, TransportError> {
        let mut child = self.spawn(cmd).await?;
        let stdin = child.stdin().take();
        let (fed, out) = tokio::join!(super::feed(stdin, cmd.stdin.as_deref()), child.wait_with_output());
        let out = out.map_err(|e| self.lost(&e))?;
        fed.map_err(|e| self.io_lost(&e))?;
        Ok(Output { status: out.status, stdout: out.stdout, stderr: out.stderr })
    }

    pub async fn exec_with_file(
        &self,
        cmd: &Cmd,
        file: &Path,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(Output, u64), TransportError> {
        let session = self.session().await?;
        let mut command = Session::to_raw_command(session, cmd.to_shell());
        command.stdin(openssh::Stdio::piped()).stdout(openssh::Stdio::piped()).stderr(openssh::Stdio::piped());
        let mut child = command.spawn().await.map_err(|e| self.lost(&e))?;
        let stdin = child.stdin().take();
        let prefix = cmd.stdin.as_deref().unwrap_or_default();
        let (fed, out) = tokio::join!(super::feed_file(stdin, prefix, file, progress), child.wait_with_output());
        let out = out.map_err(|e| self.lost(&e))?;
        let sent = fed.map_err(TransportError::copying(&self.inner.spec, file.display(), "the host"))?;
        Ok((Output { status: out.status, stdout: out.stdout, stderr: out.stderr }, sent))
    }

    fn io_lost(&self, error: &std::io::Error) -> TransportError {
        TransportError::Connection { host: self.inner.spec.clone(), message: error.to_string() }
    }

    pub async fn exec_streaming(
        &self,
        cmd: &Cmd,
        on_line: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<ExitStatus, TransportError> {
        let mut child = self.spawn(cmd).await?;
        let (Some(stdout), Some(stderr)) = (child.stdout().take(), child.stderr().take()) else {
            return Err(self.io_lost(&std::io::Error::other("no output pipes")));
        };
        let stdin = child.stdin().take();
        let (fed, ()) =
            tokio::join!(super::feed(stdin, cmd.stdin.as_deref()), super::pump_lines(stdout, stderr, on_line));
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
        let (out, sent) = self.exec_with_file(&Cmd::script(UPLOAD).arg(dest), src, progress).await?;
        if !out.status.success() {
            return Err(err(std::io::Error::other(out.stderr_str().trim().to_string())));
        }
        Ok(sent)
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
        let mut command = Session::to_raw_command(session, cmd.to_shell());
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
