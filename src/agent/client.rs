//! Reaching the agent of this account: connect to its socket, starting it first when
//! none runs, and replacing it when it is another build of ferry than the caller's
//! (the old one hands over and leaves its instances running; the new one adopts
//! them). [`call`] is how the CLI speaks to the local target's agent; [`relay`] is
//! `ferry agent call`, what an SSH channel runs on a host.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::host::{AgentInfo, Io, Reply, Request};

use super::paths::Paths;
use super::wire::{self, Answer, Call, PROTOCOL};

/// How long a starting agent may take to listen (it may first wait for a leaving one
/// to finish the calls it took).
const START_PATIENCE: Duration = Duration::from_secs(40);
/// How long an agent that agreed to hand over may take to leave.
const HANDOVER_PATIENCE: Duration = Duration::from_secs(10);

/// Why the agent could not be reached or did not answer.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot reach ferry's agent at `{socket}`: {message}")]
    Unreachable { socket: String, message: String },
    #[error("{step} failed: {message}")]
    Failed { step: String, message: String },
}

fn unreachable(paths: &Paths, message: impl std::fmt::Display) -> AgentError {
    AgentError::Unreachable { socket: paths.socket().display().to_string(), message: message.to_string() }
}

/// The running agent, as it describes itself, when its process is alive.
fn running(paths: &Paths) -> Option<AgentInfo> {
    let info: AgentInfo = serde_json::from_str(&std::fs::read_to_string(paths.agent_info()).ok()?).ok()?;
    let same = info.starttime == 0 || super::procs::starttime(info.pid) == Some(info.starttime);
    (super::procs::alive(info.pid) && same).then_some(info)
}

/// What this build of ferry says of itself as an agent (pid aside).
pub fn this_build() -> AgentInfo {
    use std::os::unix::fs::MetadataExt;
    let built =
        std::env::current_exe().and_then(std::fs::metadata).map_or(0, |m| u64::try_from(m.mtime()).unwrap_or(0));
    let pid = std::process::id();
    AgentInfo {
        pid,
        version: env!("CARGO_PKG_VERSION").into(),
        exe: super::exe_digest(),
        protocol: PROTOCOL,
        built,
        starttime: super::procs::starttime(pid).unwrap_or(0),
    }
}

/// What to do with the agent that runs.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// This build, or a newer one that speaks this protocol.
    Use,
    /// An older build: it hands over to this one.
    Replace,
    /// A newer ferry this one cannot speak to.
    Refuse,
}

fn verdict(agent: &AgentInfo, me: &AgentInfo) -> Verdict {
    if agent.exe == me.exe {
        return Verdict::Use;
    }
    let parse = |v: &str| v.split('.').map(|p| p.parse::<u64>().unwrap_or(0)).collect::<Vec<_>>();
    let (theirs, mine) = (parse(&agent.version), parse(&me.version));
    // Of two builds of one version, the later one; so two builds never take turns.
    let newer = theirs > mine || (theirs == mine && agent.built >= me.built);
    match (newer, agent.protocol == me.protocol) {
        (true, true) => Verdict::Use,
        (true, false) => Verdict::Refuse,
        (false, _) => Verdict::Replace,
    }
}

/// A connection to this account's agent, started or upgraded as needed. `boot_entry`:
/// a new agent installs the host's boot mechanism (SSH hosts; not a developer's
/// machine).
pub async fn connect(paths: &Paths, boot_entry: bool) -> Result<UnixStream, AgentError> {
    paths.prepare().map_err(|e| unreachable(paths, e))?;
    // An older build may start its agent between our look and our start: then this
    // goes round again, to replace it.
    let me = this_build();
    for _ in 0..3 {
        if let Some(stream) = reach_running(paths, &me).await? {
            return Ok(stream);
        }
        if let Some(stream) = start(paths, boot_entry, &me).await? {
            return Ok(stream);
        }
    }
    Err(unreachable(paths, "other builds of ferry keep starting their own agent here"))
}

/// A connection to the running agent when it will serve this build (after it handed
/// over, none: the caller starts the next one).
async fn reach_running(paths: &Paths, me: &AgentInfo) -> Result<Option<UnixStream>, AgentError> {
    if let Some(info) = running(paths) {
        match verdict(&info, me) {
            Verdict::Use => {
                if let Ok(stream) = UnixStream::connect(paths.socket()).await {
                    return Ok(Some(stream));
                }
            }
            Verdict::Refuse => {
                return Err(unreachable(
                    paths,
                    format!(
                        "the agent running here is ferry {} (pid {}), which speaks protocol {} and this ferry {} speaks {}: use ferry {} or newer",
                        info.version, info.pid, info.protocol, me.version, me.protocol, info.version
                    ),
                ));
            }
            Verdict::Replace => match hand_over(paths, &info).await {
                Ok(()) => {}
                Err(_) if info.protocol == PROTOCOL => {
                    // Busy with another caller's work: it serves this one as it is (or,
                    // gone meanwhile, the next one does).
                    if let Ok(stream) = UnixStream::connect(paths.socket()).await {
                        return Ok(Some(stream));
                    }
                }
                Err(why) => {
                    return Err(unreachable(
                        paths,
                        format!(
                            "the agent running here is ferry {} (pid {}), which speaks another protocol, and could not hand over ({why}); try again once it is done",
                            info.version, info.pid
                        ),
                    ));
                }
            },
        }
    }
    Ok(None)
}

/// Asks the running agent to exit, leaving its instances to the next one, and waits
/// until it has. An agent serving other callers refuses, saying so.
async fn hand_over(paths: &Paths, info: &AgentInfo) -> Result<(), String> {
    if let Ok(stream) = UnixStream::connect(paths.socket()).await {
        if let Ok(Reply::Stays(why)) = exchange(stream, "", Request::Handover, Io::default()).await {
            return Err(format!("the agent stays: {why}"));
        }
    }
    let deadline = tokio::time::Instant::now() + HANDOVER_PATIENCE;
    while running(paths).is_some_and(|now| now.pid == info.pid) || super::procs::same_process(info.pid, info.starttime)
    {
        if tokio::time::Instant::now() >= deadline {
            // An agent that cannot be asked (a protocol from before handovers, or hung)
            // is told the way a service manager would; it leaves its instances too.
            if info.starttime != 0 && super::procs::same_process(info.pid, info.starttime) {
                super::procs::kill(info.pid, rustix::process::Signal::TERM);
            }
            let grace = tokio::time::Instant::now() + HANDOVER_PATIENCE;
            while super::procs::same_process(info.pid, info.starttime) && tokio::time::Instant::now() < grace {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Starts this executable as the agent (one caller at a time) and connects; `None`
/// when another build's agent started meanwhile, which the caller deals with.
async fn start(paths: &Paths, boot_entry: bool, me: &AgentInfo) -> Result<Option<UnixStream>, AgentError> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(paths.start_lock())
        .map_err(|e| unreachable(paths, e))?;
    let deadline = tokio::time::Instant::now() + START_PATIENCE;
    while lock.try_lock().is_err() {
        if tokio::time::Instant::now() > deadline {
            return Err(unreachable(paths, "another ferry has been starting the agent for too long"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Someone else may have started one meanwhile.
    if let Some(info) = running(paths) {
        if verdict(&info, me) != Verdict::Use {
            return Ok(None);
        }
        if let Ok(stream) = UnixStream::connect(paths.socket()).await {
            return Ok(Some(stream));
        }
    }
    let exe = std::env::current_exe().map_err(|e| unreachable(paths, e))?;
    let mut command = Command::new(exe);
    command.args(["agent", "run", "--state"]).arg(&paths.state);
    if boot_entry {
        command.arg("--boot-entry");
    }
    // Detached from the caller: its own session (it calls setsid), no shared output,
    // so an SSH channel closes when the call is done.
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).current_dir("/");
    let mut child = command.spawn().map_err(|e| unreachable(paths, format!("cannot start it: {e}")))?;
    let last_logged = || {
        let log = std::fs::read_to_string(paths.log()).unwrap_or_default();
        log.lines().last().unwrap_or("it wrote nothing to its log").to_string()
    };
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(info) = running(paths) {
            if verdict(&info, me) == Verdict::Use {
                if let Ok(stream) = UnixStream::connect(paths.socket()).await {
                    return Ok(Some(stream));
                }
            }
        }
        // The agent started daemonizes only by setsid, so it stays our child: its exit
        // is seen at once, not at the deadline.
        if let Ok(Some(status)) = child.try_wait() {
            match running(paths) {
                None => return Err(unreachable(paths, format!("it exited at start ({status}): {}", last_logged()))),
                // It found another build's agent serving the account.
                Some(info) if verdict(&info, me) != Verdict::Use => return Ok(None),
                Some(_) => {}
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(unreachable(paths, format!("it did not start listening ({})", last_logged())));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Sends one call and reads the answers: lines go to `io.on_line`, the file of
/// `io.file` is streamed after the call.
pub async fn exchange(stream: UnixStream, app_dir: &str, request: Request, io: Io<'_>) -> Result<Reply, AgentError> {
    let (read, mut write) = stream.into_split();
    let size = match io.file {
        Some(path) => tokio::fs::metadata(path).await.map_or(0, |m| m.len()),
        None => 0,
    };
    let step = request.step().to_string();
    let path = std::env::var("PATH").ok();
    let call = Call { protocol: PROTOCOL, app_dir: app_dir.to_string(), request, input: size, path };
    let failed = |message: String| AgentError::Failed { step: step.clone(), message };
    wire::send(&mut write, &call).await.map_err(|e| failed(e.to_string()))?;
    let sending = async {
        if let Some(path) = io.file {
            send_file(&mut write, path, io.progress).await?;
        }
        Ok::<(), std::io::Error>(())
    };
    let receiving = async {
        let mut read = BufReader::new(read);
        loop {
            match wire::receive::<_, Answer>(&mut read).await {
                Ok(Some(Answer::Line(line))) => {
                    if let Some(on_line) = io.on_line {
                        on_line(&line);
                    }
                }
                Ok(Some(Answer::Done(reply))) => return Ok(reply),
                Ok(Some(Answer::Failed { step, message })) => return Err(AgentError::Failed { step, message }),
                Ok(None) => return Err(failed("the agent closed the connection without an answer".into())),
                Err(e) => return Err(failed(e.to_string())),
            }
        }
    };
    let (sent, answer) = tokio::join!(sending, receiving);
    match (answer, sent) {
        (Ok(reply), _) => Ok(reply),
        (Err(e), Err(io)) if io.kind() != std::io::ErrorKind::BrokenPipe => Err(failed(format!("{e} ({io})"))),
        (Err(e), _) => Err(e),
    }
}

async fn send_file(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    path: &Path,
    progress: Option<&(dyn Fn(u64) + Send + Sync)>,
) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path).await?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut sent = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        write.write_all(&buf[..n]).await?;
        sent += n as u64;
        if let Some(progress) = progress {
            progress(sent);
        }
    }
    write.flush().await
}

/// One request to this machine's agent (the local target).
pub async fn call(app_dir: &str, request: Request, io: Io<'_>) -> Result<Reply, AgentError> {
    let paths = Paths::for_this_account();
    let stream = connect(&paths, false).await?;
    exchange(stream, app_dir, request, io).await
}

/// The call line with this process's `PATH` when it names none (on a host, the login
/// environment's, as commands there had before the agent).
fn with_path(line: &str) -> String {
    match serde_json::from_str::<Call>(line) {
        Ok(mut call) if call.path.is_none() => {
            call.path = std::env::var("PATH").ok();
            serde_json::to_string(&call).map_or_else(|_| line.to_string(), |l| l + "\n")
        }
        _ => line.to_string(),
    }
}

/// `ferry agent call`: the request on stdin goes to this account's agent (started or
/// upgraded first), its answers to stdout, byte for byte. A failure to reach the
/// agent is itself an answer, so the caller always reads one.
pub fn relay() -> i32 {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return 1 };
    let code = runtime.block_on(async {
        let mut stdin = BufReader::new(tokio::io::stdin());
        let mut stdout = tokio::io::stdout();
        let mut first = String::new();
        if stdin.read_line(&mut first).await.unwrap_or(0) == 0 {
            return 1;
        }
        let paths = Paths::for_this_account();
        let stream = match connect(&paths, true).await {
            Ok(stream) => stream,
            Err(e) => {
                let answer = Answer::Failed { step: "reaching ferry's agent".into(), message: e.to_string() };
                let _ = wire::send(&mut stdout, &answer).await;
                return 1;
            }
        };
        let first = with_path(&first);
        let (mut from_agent, mut to_agent) = stream.into_split();
        if to_agent.write_all(first.as_bytes()).await.is_err() {
            return 1;
        }
        let up = tokio::spawn(async move {
            let _ = tokio::io::copy_buf(&mut stdin, &mut to_agent).await;
            let _ = to_agent.shutdown().await;
        });
        // Counted by hand: a read may fail after the answer came (the agent closes with
        // input it did not need unread, and the socket reports a reset).
        let mut copied = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            use tokio::io::AsyncReadExt;
            match from_agent.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if stdout.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    copied += n as u64;
                }
            }
        }
        // The agent closes the connection after its answer; input the caller still
        // sends then (a release the host already had) is not waited for.
        up.abort();
        if copied == 0 {
            let message = "the agent closed the connection without an answer (see its log, agent.log)".to_string();
            let _ = wire::send(&mut stdout, &Answer::Failed { step: "reaching ferry's agent".into(), message }).await;
            return 1;
        }
        let _ = stdout.flush().await;
        0
    });
    // Reading stdin blocks a thread; the process does not wait for it.
    runtime.shutdown_background();
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(version: &str, exe: &str, built: u64, protocol: u32) -> AgentInfo {
        AgentInfo { pid: 1, version: version.into(), exe: exe.into(), protocol, built, starttime: 1 }
    }

    #[test]
    fn two_builds_never_both_replace_each_other() {
        let cases = [
            (build("0.1.0", "a", 10, PROTOCOL), build("0.1.0", "b", 20, PROTOCOL)),
            (build("0.1.0", "a", 30, PROTOCOL), build("0.2.0", "b", 20, PROTOCOL)),
            (build("0.1.0", "a", 10, PROTOCOL), build("0.1.0", "b", 10, PROTOCOL)),
            (build("0.1.0", "a", 10, PROTOCOL), build("0.2.0", "b", 20, PROTOCOL + 1)),
        ];
        for (one, other) in cases {
            let (there, here) = (verdict(&one, &other), verdict(&other, &one));
            assert!(!(there == Verdict::Replace && here == Verdict::Replace), "{one:?} {other:?}");
        }
    }

    #[test]
    fn the_newer_build_wins_and_a_newer_protocol_is_refused() {
        let old = build("0.1.0", "a", 10, PROTOCOL);
        let new = build("0.1.0", "b", 20, PROTOCOL);
        assert_eq!(verdict(&old, &new), Verdict::Replace, "a later build replaces an earlier agent");
        assert_eq!(verdict(&new, &old), Verdict::Use, "an earlier build uses a later agent");
        assert_eq!(verdict(&old, &old), Verdict::Use);
        let future = build("0.2.0", "c", 5, PROTOCOL + 1);
        assert_eq!(verdict(&future, &new), Verdict::Refuse, "a newer agent this build cannot speak to");
        assert_eq!(verdict(&new, &future), Verdict::Replace, "a newer ferry replaces an older protocol");
    }
}
