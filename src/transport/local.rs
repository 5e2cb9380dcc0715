//! The local transport: the "host" is this machine and commands are child processes.
//! Arguments go straight to `execve`, so no quoting is involved at all.

use std::path::Path;
use std::process::{ExitStatus, Stdio};

use tokio::process::Command;

use super::{Cmd, FileInput, Output, TransportError};

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

    fn spawn_error(&self, cmd: &Cmd, source: std::io::Error) -> TransportError {
        TransportError::Spawn { host: self.name.clone(), program: cmd.program.clone(), source }
    }

    /// Spawns `cmd` with piped output, and a piped stdin when it has input; the
    /// caller feeds it through `feed`.
    fn spawn(&self, cmd: &Cmd, input: bool) -> Result<tokio::process::Child, TransportError> {
        Command::new(&cmd.program)
            .args(&cmd.args)
            .stdin(if input { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| self.spawn_error(cmd, e))
    }

    /// Runs `cmd` to completion on its stdin, then `file`; returns its output and
    /// the file bytes sent.
    pub async fn run(&self, cmd: &Cmd, file: Option<&FileInput<'_>>) -> Result<(Output, u64), TransportError> {
        let mut child = self.spawn(cmd, cmd.stdin.is_some() || file.is_some())?;
        let stdin = child.stdin.take();
        let (fed, out) = tokio::join!(super::feed(stdin, cmd.stdin.as_deref(), file), child.wait_with_output());
        let out = out.map_err(|e| self.spawn_error(cmd, e))?;
        let sent = fed.map_err(|e| match file {
            Some(input) => TransportError::copying(&self.name, input.path.display(), &cmd.program)(e),
            None => self.spawn_error(cmd, e),
        })?;
        Ok((Output { status: out.status, stdout: out.stdout, stderr: out.stderr }, sent))
    }

    pub async fn exec_streaming(
        &self,
        cmd: &Cmd,
        on_line: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<ExitStatus, TransportError> {
        let mut child = self.spawn(cmd, cmd.stdin.is_some())?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            unreachable!("both pipes were requested above")
        };
        let stdin = child.stdin.take();
        let (fed, ()) =
            tokio::join!(super::feed(stdin, cmd.stdin.as_deref(), None), super::pump_lines(stdout, stderr, on_line));
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
        let ok = runtime().block_on(local.run(&Cmd::new("true").stdin(input.clone()), None)).unwrap().0;
        assert!(ok.success());
        let failed = runtime().block_on(local.run(&Cmd::new("false").stdin(input), None)).unwrap().0;
        assert!(!failed.success());
    }

    #[test]
    fn input_and_output_larger_than_a_pipe_flow_both_ways() {
        let local = LocalTransport::new("local");
        let input: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        let out = runtime().block_on(local.run(&Cmd::new("cat").stdin(input.clone()), None)).unwrap().0;
        assert!(out.success());
        assert_eq!(out.stdout, input);
    }
}
