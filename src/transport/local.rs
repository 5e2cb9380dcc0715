//! The local transport: the "host" is this machine and commands are child processes.
//! Arguments go straight to `execve`, so no quoting is involved at all.

use std::path::Path;
use std::process::{ExitStatus, Stdio};

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

    /// Spawns `cmd` with piped output; its stdin is fed by the caller through `feed`.
    fn spawn(&self, cmd: &Cmd) -> Result<tokio::process::Child, TransportError> {
        Self::command(cmd).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|e| self.spawn_error(cmd, e))
    }

    pub async fn exec(&self, cmd: &Cmd) -> Result<Output, TransportError> {
        let mut child = self.spawn(cmd)?;
        let stdin = child.stdin.take();
        let (fed, out) = tokio::join!(super::feed(stdin, cmd.stdin.as_deref()), child.wait_with_output());
        let out = out.map_err(|e| self.spawn_error(cmd, e))?;
        fed.map_err(|e| self.spawn_error(cmd, e))?;
        Ok(Output { status: out.status, stdout: out.stdout, stderr: out.stderr })
    }

    pub async fn exec_with_file(
        &self,
        cmd: &Cmd,
        file: &Path,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(Output, u64), TransportError> {
        let mut child = Self::command(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(cmd, e))?;
        let stdin = child.stdin.take();
        let prefix = cmd.stdin.as_deref().unwrap_or_default();
        let (fed, out) = tokio::join!(super::feed_file(stdin, prefix, file, progress), child.wait_with_output());
        let out = out.map_err(|e| self.spawn_error(cmd, e))?;
        let sent = fed.map_err(TransportError::copying(&self.name, file.display(), &cmd.program))?;
        Ok((Output { status: out.status, stdout: out.stdout, stderr: out.stderr }, sent))
    }

    pub async fn exec_streaming(
        &self,
        cmd: &Cmd,
        on_line: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<ExitStatus, TransportError> {
        let mut child = self.spawn(cmd)?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            unreachable!("both pipes were requested above")
        };
        let stdin = child.stdin.take();
        let (fed, ()) =
            tokio::join!(super::feed(stdin, cmd.stdin.as_deref()), super::pump_lines(stdout, stderr, on_line));
        let status = child.wait().await.map_err(|e| self.spawn_error(cmd, e))?;
        fed.map_err(|e| self.spawn_error(cmd, e))?;
        Ok(status)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn a_child_that_ignores_its_input_is_judged_by_its_exit_status() {
        let local = LocalTransport::new("local");
        let input = vec![b'x'; 4 << 20];
        let ok = runtime().block_on(local.exec(&Cmd::new("true").stdin(input.clone()))).unwrap();
        assert!(ok.success());
        let failed = runtime().block_on(local.exec(&Cmd::new("false").stdin(input))).unwrap();
        assert!(!failed.success());
    }

    #[test]
    fn input_and_output_larger_than_a_pipe_flow_both_ways() {
        let local = LocalTransport::new("local");
        let input: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        let out = runtime().block_on(local.exec(&Cmd::new("cat").stdin(input.clone()))).unwrap();
        assert!(out.success());
        assert_eq!(out.stdout, input);
    }
}
