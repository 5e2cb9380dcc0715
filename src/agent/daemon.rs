//! The resident agent of one host account (`ferry agent run`): it detaches into its
//! own session, becomes the child subreaper of everything it starts, takes the
//! account's agent lock, and serves requests on its socket, one task per connection.
//! It carries out each request whole (see `ops`) and answers. It exits when it serves
//! no instance and nobody has called for a while, or hands over to a newer agent
//! (`Handover`, or SIGTERM), leaving its instances running for that one to adopt.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::UnixListener;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::host::{AgentInfo, Reply, Request};

use super::ops::Agent;
use super::paths::Paths;
use super::procs::Reaper;
use super::supervisor::Supervisor;
use super::wire::{self, Answer, Call, PROTOCOL};

/// How long an agent with nothing to supervise waits for callers before it exits.
const IDLE_EXIT: Duration = Duration::from_secs(30);
/// The same, once no app is left on the account.
const NO_APPS_EXIT: Duration = Duration::from_secs(2);

/// Signals the agent takes itself, so that its children start with them at their
/// default disposition even when the agent was started with them ignored (`nohup`,
/// `&` in a script): a handled signal is reset at exec, an ignored one is not.
const TAKEN: &[i32] = &[1, 2, 3, 10, 12, 14, 15];

/// Runs the agent until it exits; the process's exit code.
pub fn run(paths: &Paths) -> i32 {
    // A new session: no terminal, no hangup when the caller's session ends.
    let _ = rustix::process::setsid();
    if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        log(paths, &format!("cannot become a child subreaper ({e}); daemonizing instances are found by their mark"));
    }
    super::clear_signal_mask();
    if let Err(e) = paths.prepare() {
        log(paths, &format!("cannot prepare {}: {e}", paths.state.display()));
        return 1;
    }
    let Ok(lock) = fs::OpenOptions::new().create(true).truncate(false).write(true).open(paths.agent_lock()) else {
        return 1;
    };
    if lock.try_lock().is_err() {
        // Another agent serves this account.
        return 0;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            log(paths, &format!("cannot start: {e}"));
            return 1;
        }
    };
    let code = runtime.block_on(serve(paths));
    drop(lock);
    code
}

async fn serve(paths: &Paths) -> i32 {
    let mut taken = Vec::new();
    for signal in TAKEN {
        if let Ok(stream) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(*signal)) {
            taken.push(stream);
        }
    }
    let reaper = Reaper::for_agent();
    tokio::spawn(reaper.clone().run());
    let exe = std::env::current_exe().unwrap_or_else(|_| "ferry".into());
    let info =
        AgentInfo { pid: std::process::id(), version: env!("CARGO_PKG_VERSION").into(), exe: super::exe_digest() };
    let agent = Arc::new(Agent::new(paths.clone(), Supervisor::new(exe, reaper.clone()), reaper, info.clone()));
    let socket = paths.socket();
    let _ = fs::remove_file(&socket);
    let listener = match UnixListener::bind(&socket) {
        Ok(listener) => listener,
        Err(e) => {
            log(paths, &format!("cannot listen on {}: {e}", socket.display()));
            return 1;
        }
    };
    let _ = fs::set_permissions(&socket, fs::Permissions::from_mode(0o600));
    let _ = super::files::write_atomic(&paths.agent_info(), &serde_json::to_vec(&info).unwrap_or_default(), 0o600);
    log(paths, &format!("agent {} (pid {}) serving on {}", info.version, info.pid, socket.display()));
    agent.load_apps().await;
    let handover = Arc::new(Notify::new());
    let mut last_call = Instant::now();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                last_call = Instant::now();
                let (agent, handover) = (Arc::clone(&agent), Arc::clone(&handover));
                tokio::spawn(async move { connection(agent, stream, handover).await });
            }
            () = handover.notified() => break,
            () = async { match terminate.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => break,
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                // With no app left at all (the last one destroyed), it goes soon; with
                // apps but nothing running, after a while.
                let idle = if agent.has_apps() { IDLE_EXIT } else { NO_APPS_EXIT };
                if !agent.supervisor.serves_any() && last_call.elapsed() > idle {
                    log(paths, "nothing left to supervise; exiting");
                    break;
                }
            }
        }
    }
    // The next agent adopts what runs: nothing is stopped here.
    let _ = fs::remove_file(&socket);
    let _ = fs::remove_dir(paths.socket_dir());
    let _ = fs::remove_file(paths.agent_info());
    drop(taken);
    0
}

async fn connection(agent: Arc<Agent>, stream: tokio::net::UnixStream, handover: Arc<Notify>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let call: Call = match wire::receive(&mut read).await {
        Ok(Some(call)) => call,
        Ok(None) => return,
        Err(e) => {
            let _ =
                wire::send(&mut write, &Answer::Failed { step: "reading the request".into(), message: e.to_string() })
                    .await;
            return;
        }
    };
    if call.protocol != PROTOCOL {
        let message = format!("this agent speaks protocol {PROTOCOL}, the caller {}", call.protocol);
        let _ = wire::send(&mut write, &Answer::Failed { step: "greeting the agent".into(), message }).await;
        return;
    }
    let step = call.request.step();
    let is_handover = matches!(call.request, Request::Handover);
    let answer = match agent.handle(call, &mut read, &mut write).await {
        Ok(reply) => Answer::Done(reply),
        Err(message) => Answer::Failed { step: step.into(), message },
    };
    let _ = wire::send(&mut write, &answer).await;
    if is_handover && matches!(answer, Answer::Done(Reply::Done)) {
        handover.notify_one();
    }
}

/// One line in the agent's log.
pub fn log(paths: &Paths, line: &str) {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    if let Ok(mut file) = fs::OpenOptions::new().append(true).create(true).open(paths.log()) {
        let _ = writeln!(file, "{stamp} {line}");
    }
}
