//! Transports: the few primitives ferry needs from a machine — run a program with
//! arguments (optionally feeding stdin, optionally streaming output lines), upload a
//! file, and reach a TCP port there. `local` runs on this machine; an SSH transport is
//! the second implementation of the same primitives.
//!
//! This module owns argument quoting: a remote command is always a program plus an
//! argument vector, and [`Cmd::to_shell`] is the one place that turns it into a shell
//! string. It knows nothing about deploys, releases or the on-host layout.

#[cfg(test)]
pub mod fake;
mod local;
mod ssh;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitStatus;

pub use local::LocalTransport;
pub use ssh::{SshOptions, SshTransport};

/// A program and its arguments, never a shell string. Values that come from users
/// (versions, env values, paths) travel as separate arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<String>,
    pub stdin: Option<Vec<u8>>,
}

impl Cmd {
    pub fn new(program: impl Into<String>) -> Self {
        Self { program: program.into(), args: Vec::new(), stdin: None }
    }

    /// `sh -c SCRIPT ferry ARG...`: the script is ferry's own constant text and reads the
    /// user's values only as positional parameters, so nothing user-controlled is parsed
    /// by the shell.
    pub fn script(script: &str) -> Self {
        Self::new("sh").arg("-c").arg(script).arg("ferry")
    }

    #[must_use]
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    #[must_use]
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }

    /// The command as one POSIX shell word list, every word quoted. Used where a
    /// transport can only pass a string (SSH hands the remote shell a single line).
    pub fn to_shell(&self) -> String {
        std::iter::once(&self.program).chain(&self.args).map(|word| quote(word)).collect::<Vec<_>>().join(" ")
    }
}

/// Quote one word for a POSIX shell so it arrives literally.
pub fn quote(word: &str) -> String {
    if !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:@,+%".contains(&b)) {
        return word.to_string();
    }
    // Single quotes keep everything literal; an embedded single quote closes the
    // quoted run, adds an escaped quote, and reopens it.
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// A file a command reads after its `stdin` bytes, streamed, with the bytes of it
/// sent so far reported to `progress`.
pub struct FileInput<'a> {
    pub path: &'a Path,
    pub progress: &'a (dyn Fn(u64) + Send + Sync),
}

/// Writes `prefix` and then `file` (when given) to a child's stdin and closes it;
/// returns the file bytes sent. Runs beside the reading of the child's output, so
/// neither side can fill a pipe and wait on the other; memory stays flat whatever
/// the file's size. A child that exits without reading all of its input is not an
/// error here: its exit status says what happened.
async fn feed(
    stdin: Option<impl tokio::io::AsyncWrite + Unpin>,
    prefix: Option<&[u8]>,
    file: Option<&FileInput<'_>>,
) -> std::io::Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(mut stdin) = stdin else { return Ok(0) };
    let mut sent = 0u64;
    let written: std::io::Result<()> = async {
        stdin.write_all(prefix.unwrap_or_default()).await?;
        if let Some(input) = file {
            let mut file = tokio::fs::File::open(input.path).await?;
            let mut buf = vec![0u8; FEED_CHUNK];
            loop {
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                stdin.write_all(&buf[..n]).await?;
                sent += n as u64;
                (input.progress)(sent);
            }
        }
        stdin.shutdown().await
    }
    .await;
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(sent),
    }
}

/// Bytes per write when streaming a file to a command.
const FEED_CHUNK: usize = 256 * 1024;

/// Hands every line of `stdout` and `stderr` to `on_line` as it arrives, until both end.
async fn pump_lines(
    stdout: impl tokio::io::AsyncRead + Unpin,
    stderr: impl tokio::io::AsyncRead + Unpin,
    on_line: &(dyn Fn(&str) + Send + Sync),
) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut out_lines = BufReader::new(stdout).lines();
    let mut err_lines = BufReader::new(stderr).lines();
    let (mut out_done, mut err_done) = (false, false);
    while !(out_done && err_done) {
        tokio::select! {
            line = out_lines.next_line(), if !out_done => match line {
                Ok(Some(line)) => on_line(&line),
                _ => out_done = true,
            },
            line = err_lines.next_line(), if !err_done => match line {
                Ok(Some(line)) => on_line(&line),
                _ => err_done = true,
            },
        }
    }
}

#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("failed to run `{program}` on `{host}`")]
    Spawn { host: String, program: String, source: std::io::Error },
    #[error("failed to copy `{from}` to `{host}:{to}`")]
    Upload { host: String, from: String, to: String, source: std::io::Error },
    #[error("cannot reach `{host}`: {message}")]
    Connection { host: String, message: String },
    #[error("refusing to connect to `{host}`: {message}")]
    HostKey { host: String, message: String, hint: String },
}

impl TransportError {
    /// The error for a failed copy of `from` to `to` on `host`, as a `map_err` function.
    pub fn copying(
        host: &str,
        from: impl std::fmt::Display,
        to: impl std::fmt::Display,
    ) -> impl Fn(std::io::Error) -> Self {
        let (host, from, to) = (host.to_string(), from.to_string(), to.to_string());
        move |source| TransportError::Upload { host: host.clone(), from: from.clone(), to: to.clone(), source }
    }
}

/// Which machine a transport reaches. Chosen at runtime from `[ferry] target`.
#[derive(Debug, Clone)]
pub enum Transport {
    Local(LocalTransport),
    Ssh(SshTransport),
    /// A simulated host answering typed requests from a model (engine unit tests).
    #[cfg(test)]
    Fake(fake::FakeTransport),
}

impl Transport {
    pub fn host(&self) -> &str {
        match self {
            Transport::Local(t) => t.host(),
            Transport::Ssh(t) => t.host(),
            #[cfg(test)]
            Transport::Fake(t) => t.host(),
        }
    }

    /// The address other machines use for this one: loopback for the local target,
    /// the host part of `user@host:port` for SSH.
    pub fn address(&self) -> String {
        match self {
            Transport::Ssh(t) => {
                let spec = t.host();
                let host = spec.rsplit_once('@').map_or(spec, |(_, h)| h);
                match host.rsplit_once(':') {
                    Some((h, port)) if port.parse::<u16>().is_ok() => h.to_string(),
                    _ => host.to_string(),
                }
            }
            Transport::Local(_) => "127.0.0.1".to_string(),
            #[cfg(test)]
            Transport::Fake(_) => "127.0.0.1".to_string(),
        }
    }

    /// Closes the port forwards this run opened through the machine's connection, so
    /// a master connection kept for later runs does not keep them listening.
    pub async fn close_forwards(&self) {
        if let Transport::Ssh(t) = self {
            t.close_forwards().await;
        }
    }

    /// Run to completion, capturing output.
    pub async fn exec(&self, cmd: &Cmd) -> Result<Output, TransportError> {
        match self {
            Transport::Local(t) => t.run(cmd, None).await.map(|(out, _)| out),
            Transport::Ssh(t) => t.run(cmd, None).await.map(|(out, _)| out),
            #[cfg(test)]
            Transport::Fake(t) => Err(t.runs_no_commands()),
        }
    }

    /// Run to completion, handing each output line (stdout and stderr) to `on_line`
    /// as it arrives. Returns the exit status.
    pub async fn exec_streaming(
        &self,
        cmd: &Cmd,
        on_line: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<ExitStatus, TransportError> {
        match self {
            Transport::Local(t) => t.exec_streaming(cmd, on_line).await,
            Transport::Ssh(t) => t.exec_streaming(cmd, on_line).await,
            #[cfg(test)]
            Transport::Fake(t) => Err(t.runs_no_commands()),
        }
    }

    /// Copy a local file to `dest` on the machine, calling `progress` with bytes sent.
    pub async fn upload(
        &self,
        src: &Path,
        dest: &str,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, TransportError> {
        match self {
            Transport::Local(t) => t.upload(src, dest, progress).await,
            Transport::Ssh(t) => t.upload(src, dest, progress).await,
            #[cfg(test)]
            Transport::Fake(t) => Err(t.runs_no_commands()),
        }
    }

    /// Runs `cmd` with its stdin (if any) followed by the contents of `file` as input,
    /// streamed; returns its output and the file bytes sent.
    pub async fn exec_with_file(
        &self,
        cmd: &Cmd,
        file: &Path,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(Output, u64), TransportError> {
        match self {
            Transport::Local(t) => t.run(cmd, Some(&FileInput { path: file, progress })).await,
            Transport::Ssh(t) => t.run(cmd, Some(&FileInput { path: file, progress })).await,
            #[cfg(test)]
            Transport::Fake(t) => Err(t.runs_no_commands()),
        }
    }

    /// Opens the connection now (a no-op on the local target), so that many hosts
    /// can be connected at once before steps that must go one host at a time.
    pub async fn connect(&self) -> Result<(), TransportError> {
        match self {
            Transport::Local(_) => Ok(()),
            Transport::Ssh(t) => t.connect().await,
            #[cfg(test)]
            Transport::Fake(t) => t.connect(),
        }
    }

    /// An address on this machine that reaches `port` on the target machine's loopback.
    pub async fn forward(&self, port: u16) -> Result<SocketAddr, TransportError> {
        match self {
            Transport::Ssh(t) => t.forward(port).await,
            Transport::Local(_) => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
            #[cfg(test)]
            Transport::Fake(_) => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
        }
    }

    /// An address on this machine that reaches `host:port` as the target machine
    /// reaches it (a database only the hosts can see); `None` on the local target,
    /// where it is reached directly.
    pub async fn forward_to(&self, host: &str, port: u16) -> Result<Option<SocketAddr>, TransportError> {
        match self {
            Transport::Ssh(t) => t.forward_to(host, port).await.map(Some),
            Transport::Local(_) => Ok(None),
            #[cfg(test)]
            Transport::Fake(_) => Ok(None),
        }
    }

    /// Copies a file from the machine to a local path.
    pub async fn download(&self, src: &str, dest: &Path) -> Result<u64, TransportError> {
        match self {
            Transport::Local(_) => {
                tokio::fs::copy(src, dest).await.map_err(TransportError::copying(self.host(), src, dest.display()))
            }
            Transport::Ssh(t) => t.download(src, dest).await,
            #[cfg(test)]
            Transport::Fake(t) => Err(t.runs_no_commands()),
        }
    }

    /// Whether the machine is this one (ports can be probed directly).
    pub fn is_local(&self) -> bool {
        matches!(self, Transport::Local(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_are_left_alone() {
        assert_eq!(quote("releases/v1.2.3+build"), "releases/v1.2.3+build");
    }

    #[test]
    fn hostile_words_are_single_quoted() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("$(rm -rf /)"), "'$(rm -rf /)'");
        assert_eq!(quote("`id`;ls"), "'`id`;ls'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn shell_round_trip_is_literal() {
        let hostile = ["it's \"q\"", "$(echo pwned)", "`id`", "a;b", "new\nline", "*", "~"];
        let cmd = Cmd::new("printf").arg("%s\\0").args(hostile);
        let out = std::process::Command::new("sh").arg("-c").arg(cmd.to_shell()).output().unwrap();
        let words: Vec<&[u8]> = out.stdout.split(|b| *b == 0).filter(|w| !w.is_empty()).collect();
        let expected: Vec<&[u8]> = hostile.iter().map(|w| w.as_bytes()).collect();
        assert_eq!(words, expected);
    }
}
