//! The local transport: the "host" is this machine and commands are child processes.
//! Arguments go straight to `execve`, so no quoting is involved at all.

use std::path::Path;
use std::process::{ExitStatus, Stdio};

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::{Cmd, Output, TransportError};

#[derive(Debug, Clone)]
pub struct LocalTransport {
    name: String,
}

impl LocalTransport {
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    pub fn host(&self) -> &str {
        &self.name
    }

    fn command(cmd: &Cmd) -> Command {
        let mut command = Command::new(&cmd.program);
        command
            .args(&cmd.args)
            .stdin(if cmd.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .kill_on_drop(true);
        command
    }

    fn spawn_error(&self, cmd: &Cmd, source: std::io::Error) -> TransportError {
        TransportError::Spawn { host: self.name.clone(), program: cmd.program.clone(), source }
    }

    /// Spawns `cmd` with piped output and feeds it its stdin.
    async fn spawn(&self, cmd: &Cmd) -> Result<tokio::process::Child, TransportError> {
        let mut child = Self::command(cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(cmd, e))?;
        if let (Some(data), Some(mut stdin)) = (&cmd.stdin, child.stdin.take()) {
            stdin.write_all(data).await.map_err(|e| self.spawn_error(cmd, e))?;
        }
        Ok(child)
    }

    pub async fn exec(&self, cmd: &Cmd) -> Result<Output, TransportError> {
        let child = self.spawn(cmd).await?;
        let out = child.wait_with_output().await.map_err(|e| self.spawn_error(cmd, e))?;
        Ok(Output { status: out.status, stdout: out.stdout, stderr: out.stderr })
    }

    pub async fn exec_streaming(
        &self,
        cmd: &Cmd,
        on_line: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<ExitStatus, TransportError> {
        let mut child = self.spawn(cmd).await?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            unreachable!("both pipes were requested above")
        };
        super::pump_lines(stdout, stderr, on_line).await;
        child.wait().await.map_err(|e| self.spawn_error(cmd, e))
    }

    pub async fn upload(
        &self,
        src: &Path,
        dest: &str,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, TransportError> {
        let err = TransportError::copying(&self.name, src.display(), dest);
        if let Some(parent) = Path::new(dest).parent() {
            tokio::fs::create_dir_all(parent).await.map_err(&err)?;
        }
        let tmp = format!("{dest}.part.{}", std::process::id());
        let _ = tokio::fs::remove_file(&tmp).await;
        let result = async {
            // Every local "host" is this machine: a hard link is a copy that costs nothing.
            let bytes = match tokio::fs::hard_link(src, &tmp).await {
                Ok(()) => tokio::fs::metadata(&tmp).await?.len(),
                Err(_) => tokio::fs::copy(src, &tmp).await?,
            };
            tokio::fs::rename(&tmp, dest).await?;
            Ok(bytes)
        }
        .await;
        let bytes = match result {
            Ok(bytes) => bytes,
            Err(e) => {
                // A partial copy must not keep eating a disk that is already full.
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(err(e));
            }
        };
        progress(bytes);
        Ok(bytes)
    }
}
