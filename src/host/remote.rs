//! Requests to an SSH host's agent: over the SSH channel to `ferry agent call` on the
//! host, which relays them to the agent there (starting or upgrading it first). The
//! first call of a run finds ferry's executable on the host: this very build, put
//! there by sha256 once (0 bytes on later runs) when the host's kind matches this
//! machine's; else a `ferry` of the same version on the host's PATH; else an error
//! that names both ways.

use std::sync::Mutex;

use crate::agent::wire::{Answer, Call, PROTOCOL};
use crate::transport::{Cmd, FileInput, SshTransport};

use super::{Host, HostError, Io, Reply, Request};

const BOOTSTRAP: &str = include_str!("../transport/scripts/bootstrap.sh");
const UPLOAD: &str = include_str!("../transport/scripts/upload.sh");

pub async fn call(host: &Host, ssh: &SshTransport, request: Request, io: Io<'_>) -> Result<Reply, HostError> {
    let agent = ssh.agent_path(|| find_agent(host, ssh)).await?;
    let step = request.step();
    let size = match io.file {
        Some(path) => std::fs::metadata(path).map_or(0, |m| m.len()),
        None => 0,
    };
    // The host's own PATH (the relay's) is what applies there.
    let call = Call { protocol: PROTOCOL, app_dir: host.app_dir.clone(), request, input: size, path: None };
    let mut line = serde_json::to_vec(&call).map_err(|e| step_error(host, step, e.to_string()))?;
    line.push(b'\n');
    let cmd = Cmd::new(agent.clone()).args(["agent", "call"]).stdin(line);
    let answer: Mutex<Option<Result<Reply, HostError>>> = Mutex::new(None);
    let on_line = |text: &str| {
        let parsed = serde_json::from_str::<Answer>(text);
        let mut slot = answer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match parsed {
            Ok(Answer::Line(line)) => {
                if let Some(on_line) = io.on_line {
                    on_line(&line);
                }
            }
            Ok(Answer::Done(reply)) => *slot = Some(Ok(reply)),
            Ok(Answer::Failed { step: failed, message }) => {
                *slot =
                    Some(Err(HostError::Step { host: host.name.clone(), step: known_step(&failed, step), message }));
            }
            Err(_) => {
                let shown: String = text.chars().take(200).collect();
                *slot = Some(Err(step_error(host, step, format!("unexpected answer `{shown}`"))));
            }
        }
    };
    let progress = io.progress.unwrap_or(&|_| {});
    let file = io.file.map(|path| FileInput { path, progress });
    let (status, stderr) = ssh.run_lines(&cmd, file.as_ref(), &on_line).await?;
    let answered = answer.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    if let Some(result) = answered {
        return result;
    }
    if status.code() == Some(126) {
        return Err(step_error(
            host,
            step,
            format!(
                "the host cannot run ferry's executable `{agent}` (is its file system mounted noexec?); set `[ferry] root` to a directory where programs may run, or install ferry {} on the host's PATH",
                env!("CARGO_PKG_VERSION")
            ),
        ));
    }
    let why = if stderr.trim().is_empty() {
        format!("`ferry agent call` exited with {status}")
    } else {
        stderr.trim().to_string()
    };
    Err(step_error(host, step, format!("the host's agent gave no answer: {why}")))
}

/// Runs `ferry ARGS...` on the host with this terminal's streams; its exit code.
pub async fn interactive(host: &Host, ssh: &SshTransport, args: &[String], tty: bool) -> Result<i32, HostError> {
    let agent = ssh.agent_path(|| find_agent(host, ssh)).await?;
    Ok(ssh.interactive(&Cmd::new(agent).args(args), tty).await?)
}

/// The step an agent's failure names (steps are fixed names, but arrive as text): the
/// request's own, or one of the agent's own steps.
pub(super) fn known_step(failed: &str, request: &'static str) -> &'static str {
    const AGENT: &[&str] = &["reaching ferry's agent", "greeting the agent", "reading the request"];
    if failed == request {
        return request;
    }
    AGENT.iter().find(|k| **k == failed).copied().unwrap_or(request)
}

fn step_error(host: &Host, step: &'static str, message: String) -> HostError {
    HostError::Step { host: host.name.clone(), step, message }
}

/// The directory ferry keeps its executables in on the host: beside the apps.
fn bin_dir(host: &Host) -> String {
    match host.app_dir.rsplit_once('/') {
        Some((root, _)) if !root.is_empty() => format!("{root}/.bin"),
        _ => "~/.ferry-bin".to_string(),
    }
}

async fn find_agent(host: &Host, ssh: &SshTransport) -> Result<String, HostError> {
    let digest = crate::agent::exe_digest();
    let name = format!("ferry-{}", &digest[..digest.len().min(16)]);
    let out = host.transport.exec(&Cmd::script(BOOTSTRAP).args([bin_dir(host), name])).await?;
    if !out.success() {
        return Err(step_error(host, "looking for ferry on the host", out.stderr_str()));
    }
    let text = out.stdout_str();
    let fact = |tag: &str| text.lines().find_map(|l| l.strip_prefix(tag)).map(str::trim);
    let bin = fact("bin ").unwrap_or_default().to_string();
    if text.lines().any(|l| l == "have") {
        return Ok(bin);
    }
    let (kernel, machine) = fact("os ").and_then(|os| os.split_once(' ')).unwrap_or(("?", "?"));
    let same_kind = kernel.eq_ignore_ascii_case(std::env::consts::OS) && machine == std::env::consts::ARCH;
    if same_kind {
        upload(host, ssh, &bin, &digest).await?;
        return Ok(bin);
    }
    if fact("path ") == Some(env!("CARGO_PKG_VERSION")) {
        return Ok("ferry".to_string());
    }
    Err(HostError::Step {
        host: host.name.clone(),
        step: "getting ferry onto the host",
        message: format!(
            "`{}` runs {kernel} {machine} and this ferry is built for {} {}; install ferry {} on the host's PATH, or deploy from a machine of the host's kind",
            host.name,
            std::env::consts::OS,
            std::env::consts::ARCH,
            env!("CARGO_PKG_VERSION")
        ),
    })
}

/// Puts this executable on the host at `bin`, checked by its sha256.
async fn upload(host: &Host, ssh: &SshTransport, bin: &str, digest: &str) -> Result<(), HostError> {
    let exe = std::env::current_exe()
        .map_err(|e| step_error(host, "getting ferry onto the host", format!("this executable: {e}")))?;
    let cmd = Cmd::script(UPLOAD).args([bin, "755", digest]);
    let input = FileInput { path: &exe, progress: &|_| {} };
    let (status, stderr) = ssh.run_lines(&cmd, Some(&input), &|_| {}).await?;
    if !status.success() {
        return Err(step_error(host, "getting ferry onto the host", stderr.trim().to_string()));
    }
    Ok(())
}
