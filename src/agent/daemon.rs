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
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::host::{AgentInfo, Reply, Request};

use super::ops::Agent;
use super::paths::Paths;
use super::procs::Reaper;
use super::supervisor::Supervisor;
use super::wire::{self, Answer, Call, PROTOCOL};

/// How long a new agent waits for a leaving one to let go of the account.
const LOCK_PATIENCE: Duration = Duration::from_secs(30);
/// How long an agent told to stop (SIGTERM) lets the calls it took finish.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// How long an agent with nothing to supervise waits for callers before it exits.
const IDLE_EXIT: Duration = Duration::from_secs(30);
/// The same, once no app is left on the account.
const NO_APPS_EXIT: Duration = Duration::from_secs(2);

/// [`IDLE_EXIT`], or what `FERRY_AGENT_IDLE_EXIT` says (`5m`, `500ms`).
fn idle_exit() -> Duration {
    std::env::var("FERRY_AGENT_IDLE_EXIT").ok().and_then(|v| humantime::parse_duration(&v).ok()).unwrap_or(IDLE_EXIT)
}

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
    super::raise_nofile();
    if let Err(e) = paths.prepare() {
        log(paths, &format!("cannot prepare {}: {e}", paths.state.display()));
        return 1;
    }
    let lock = match fs::OpenOptions::new().create(true).truncate(false).write(true).open(paths.agent_lock()) {
        Ok(lock) => lock,
        Err(e) => {
            log(paths, &format!("cannot open {}: {e}", paths.agent_lock().display()));
            return 1;
        }
    };
    // An agent that is leaving (idle, or handing over) still holds the lock while it
    // finishes the calls it took: this one waits for it.
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    while lock.try_lock().is_err() {
        if std::time::Instant::now() >= deadline {
            // Another agent serves this account.
            return 0;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // The one that left may have taken the socket's directory with it.
    if let Err(e) = paths.prepare() {
        log(paths, &format!("cannot prepare {}: {e}", paths.socket_dir().display()));
        return 1;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            log(paths, &format!("cannot start: {e}"));
            return 1;
        }
    };
    let code = runtime.block_on(serve(paths, &lock));
    drop(runtime);
    drop(lock);
    code
}

async fn serve(paths: &Paths, lock: &fs::File) -> i32 {
    let mut taken = Vec::new();
    for signal in TAKEN {
        if let Ok(stream) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(*signal)) {
            taken.push(stream);
        }
    }
    let reaper = Reaper::for_agent();
    tokio::spawn(reaper.clone().run());
    let exe = std::env::current_exe().unwrap_or_else(|_| "ferry".into());
    let info = AgentInfo { pid: std::process::id(), ..super::client::this_build() };
    let sockets = super::proxy::Sockets::new(paths.clone());
    let agent =
        Arc::new(Agent::new(paths.clone(), Supervisor::new(exe, reaper.clone()), reaper, info.clone(), sockets));
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
    // Heard from now on, even while instances are being loaded.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    agent.load_apps().await;
    // A keeper that holds sockets no app uses any more lets them go.
    agent.doors.tend();
    agent.doors.prune();
    let calls = Calls::new();
    let (handovers, mut asked) = mpsc::channel::<oneshot::Sender<Result<(), String>>>(4);
    // Until it leaves: idle or told to stop (the front door's sockets are let go), or
    // handed over (they are kept for the next agent).
    let (stop_by, release) = loop {
        tokio::select! {
            accepted = listener.accept() => take(accepted, &agent, &handovers, &calls).await,
            Some(reply) = asked.recv() => {
                // The asking call is one of those in flight: any other is another
                // caller's work, which a handover would cut off.
                let others = calls.active().saturating_sub(1);
                if others == 0 {
                    let _ = reply.send(Ok(()));
                    log(paths, "handing over to another ferry; instances keep running");
                    break (None, false);
                }
                let _ = reply.send(Err(format!("it is serving {others} other call(s)")));
            }
            () = terminated(&mut terminate) => {
                log(paths, "stopping (SIGTERM); instances keep running, the front door closes");
                break (Some(Instant::now() + STOP_GRACE), true);
            }
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                // With no app left at all (the last one destroyed), it goes soon; with
                // apps but nothing running, after a while.
                let idle = if agent.has_apps() { idle_exit() } else { idle_exit().min(NO_APPS_EXIT) };
                if calls.active() == 0 && !agent.supervisor.serves_any() && calls.quiet_for() > idle {
                    log(paths, "nothing left to supervise; exiting");
                    break (None, true);
                }
                agent.doors.tend();
            }
        }
    };
    // Leaving. New callers no longer find it (they start the next agent, which waits
    // for this one's lock); calls already made, queued ones included, are served to
    // the end, with a bound once told to stop. Instances are left as they are, their
    // exits unanswered: the next agent adopts what runs and starts what should.
    agent.supervisor.freeze();
    let _ = fs::remove_file(paths.agent_info());
    let _ = fs::remove_file(&socket);
    let mut stop_by = stop_by;
    loop {
        if stop_by.is_some_and(|by| Instant::now() >= by) {
            log(paths, &format!("{} call(s) cut off at the end of the stop grace", calls.active()));
            break;
        }
        tokio::select! {
            accepted = listener.accept() => take(accepted, &agent, &handovers, &calls).await,
            // Another newer ferry asking: this agent is leaving anyway.
            Some(reply) = asked.recv() => { let _ = reply.send(Ok(())); }
            () = terminated(&mut terminate), if stop_by.is_none() => {
                stop_by = Some(Instant::now() + STOP_GRACE);
            }
            () = tokio::time::sleep(Duration::from_millis(20)) => {
                if calls.active() == 0 {
                    break;
                }
            }
        }
    }
    drop(listener);
    // The front door last: it served all along. New connections now wait in the
    // sockets' queues for the next agent; this one may start as soon as the lock is
    // let go, while the connections this one took are answered and closed.
    agent.doors.stop_accepting(release);
    let _ = fs::remove_dir(paths.socket_dir());
    let _ = lock.unlock();
    agent.doors.finish().await;
    drop(taken);
    0
}

/// What asks the main loop whether a handover may happen.
type Handovers = mpsc::Sender<oneshot::Sender<Result<(), String>>>;

/// Serves an accepted connection as a call in flight, on a task of its own.
async fn take(
    accepted: std::io::Result<(tokio::net::UnixStream, tokio::net::unix::SocketAddr)>,
    agent: &Arc<Agent>,
    handovers: &Handovers,
    calls: &Calls,
) {
    match accepted {
        Ok((stream, _)) => {
            let (agent, handovers, call) = (Arc::clone(agent), handovers.clone(), calls.begin());
            tokio::spawn(async move { connection(agent, stream, handovers, call).await });
        }
        // Out of file descriptors, say: not a reason to spin.
        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
    }
}

/// Resolves when SIGTERM arrives (never, when it could not be listened for).
async fn terminated(terminate: &mut Option<tokio::signal::unix::Signal>) {
    match terminate.as_mut() {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// The calls in flight, and when the last one ended.
#[derive(Clone)]
struct Calls(Arc<std::sync::Mutex<(usize, Instant)>>);

impl Calls {
    /// None yet; the quiet time counts from now.
    fn new() -> Self {
        Self(Arc::new(std::sync::Mutex::new((0, Instant::now()))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, Instant)> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn begin(&self) -> CallGuard {
        self.lock().0 += 1;
        CallGuard(self.clone())
    }

    fn active(&self) -> usize {
        self.lock().0
    }

    /// How long no call has been in flight (since the agent started, before any).
    fn quiet_for(&self) -> Duration {
        let (active, last) = *self.lock();
        if active > 0 {
            return Duration::ZERO;
        }
        last.elapsed()
    }
}

/// One call in flight; its end is counted when dropped, however the call ends.
struct CallGuard(Calls);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let mut calls = self.0.lock();
        calls.0 = calls.0.saturating_sub(1);
        calls.1 = Instant::now();
    }
}

async fn connection(agent: Arc<Agent>, stream: tokio::net::UnixStream, handovers: Handovers, _call: CallGuard) {
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
    // Whatever the caller's protocol, it may greet this agent and ask it to hand over:
    // that is how a newer ferry replaces it.
    let agent_request = matches!(call.request, Request::Hello | Request::Handover);
    if call.protocol != PROTOCOL && !agent_request {
        let message = format!("this agent speaks protocol {PROTOCOL}, the caller {}", call.protocol);
        let _ = wire::send(&mut write, &Answer::Failed { step: "greeting the agent".into(), message }).await;
        return;
    }
    let step = call.request.step();
    let answer = if matches!(call.request, Request::Handover) {
        let (reply, approved) = oneshot::channel();
        // No answer means the agent is leaving anyway.
        let decided = match handovers.send(reply).await {
            Ok(()) => approved.await.unwrap_or(Ok(())),
            Err(_) => Ok(()),
        };
        match decided {
            Ok(()) => Answer::Done(Reply::Done),
            Err(why) => Answer::Done(Reply::Stays(why)),
        }
    } else {
        match agent.handle(call, &mut read, &mut write).await {
            Ok(reply) => Answer::Done(reply),
            Err(message) => Answer::Failed { step: step.into(), message },
        }
    };
    let _ = wire::send(&mut write, &answer).await;
}

/// One line in the agent's log.
pub fn log(paths: &Paths, line: &str) {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    if let Ok(mut file) = super::files::open_private_log(&paths.log()) {
        let _ = writeln!(file, "{stamp} {line}");
    }
}
