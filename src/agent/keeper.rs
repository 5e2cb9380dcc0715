//! The keeper (`ferry agent keep`): a process that holds the front door's listening
//! sockets and does nothing else, so that they stay open whatever happens to the agent
//! that serves them. Connections made while no agent accepts wait in the socket's
//! queue instead of being refused:
//!
//! - an agent that hands over to a newer one stops accepting, and the newer one takes
//!   the same sockets from the keeper (passed over a Unix socket, `SCM_RIGHTS`): at no
//!   moment is nothing listening, and the kernel's queue is never dropped, which
//!   `SO_REUSEPORT` overlap would risk;
//! - an agent that dies (killed, crashed) is started again by the keeper at once;
//! - a keeper that dies leaves the agent with its own copies, and the agent starts a
//!   new keeper and gives them to it.
//!
//! One keeper per state directory, found at `keeper.sock` beside the agent's socket.
//! It speaks one JSON line per message and answers each one; a socket travels as the
//! ancillary data of the line that names it. It exits once it holds no socket and no
//! agent is connected.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

use super::paths::Paths;

/// How many connections a front door's socket queues while no agent accepts (the
/// kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 4096;
/// How long the keeper waits for the agent that took over from one that said goodbye
/// before it starts one itself.
const TAKEOVER_PATIENCE: Duration = Duration::from_secs(45);
/// How long an answer from the keeper may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest message either side sends.
const MAX_LINE: usize = 64 * 1024;

/// What an agent asks of the keeper.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ask {
    /// This agent serves the sockets now; start `exe` again should it die.
    Hello { pid: u32, exe: PathBuf },
    /// A socket listening on the address (the one held, or a new one).
    Listen(SocketAddr),
    /// Hold this socket (attached): the agent had it, the keeper did not.
    Adopt(SocketAddr),
    /// Let the socket go.
    Close(SocketAddr),
    /// The agent leaves on purpose: nothing to start again. With `release`, every
    /// socket goes too (nothing is served here any more).
    Bye { release: bool },
}

/// The keeper's answer.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Answer {
    /// The addresses it holds.
    #[serde(default)]
    pub held: Vec<SocketAddr>,
    /// Why it could not: the OS error number when there is one, and the message.
    #[serde(default)]
    pub error: Option<(Option<i32>, String)>,
}

/// What the keeper keeps.
#[derive(Default)]
struct Kept {
    held: HashMap<SocketAddr, TcpListener>,
    /// The agent to start again: the connection it said hello on, its pid, and its
    /// executable.
    agent: Option<(u64, u32, PathBuf)>,
    /// Bumped at every hello: a restart planned before it is called off.
    generation: u64,
    connections: usize,
}

type Shared = Arc<Mutex<Kept>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Kept> {
    shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The keeper's socket.
pub fn socket(paths: &Paths) -> PathBuf {
    paths.socket_dir().join("keeper.sock")
}

/// Runs the keeper until it holds nothing; the process's exit code.
pub fn run(paths: &Paths) -> i32 {
    let _ = rustix::process::setsid();
    if paths.prepare().is_err() {
        return 1;
    }
    let Ok(lock_file) =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(paths.state.join("keeper.lock"))
    else {
        return 1;
    };
    if lock_file.try_lock().is_err() {
        // Another keeper serves this account.
        return 0;
    }
    let path = socket(paths);
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(listener) => listener,
        Err(e) => {
            super::daemon::log(paths, &format!("keeper: cannot listen on {}: {e}", path.display()));
            return 1;
        }
    };
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    let shared: Shared = Arc::default();
    let mut next_id = 0u64;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        next_id += 1;
        lock(&shared).connections += 1;
        let (shared, paths, id) = (Arc::clone(&shared), paths.clone(), next_id);
        std::thread::spawn(move || {
            let said_bye = serve(&stream, &shared, &paths, id);
            let mut kept = lock(&shared);
            kept.connections -= 1;
            let was_agent = kept.agent.as_ref().is_some_and(|(conn, _, _)| *conn == id);
            if was_agent {
                let (_, pid, exe) = kept.agent.take().unwrap_or_default();
                match said_bye {
                    // It left on purpose; the one taking over says hello soon, or is
                    // started after a while.
                    Some(false) => plan_restart(&shared, &paths, exe, kept.generation, TAKEOVER_PATIENCE),
                    Some(true) => {}
                    None => {
                        drop(kept);
                        // Only a dead agent is replaced: a live one that dropped its
                        // connection comes back with a hello of its own.
                        if gone(pid) {
                            super::daemon::log(&paths, "keeper: the agent is gone without a word; starting it again");
                            let generation = lock(&shared).generation;
                            plan_restart(&shared, &paths, exe, generation, Duration::ZERO);
                        }
                        kept = lock(&shared);
                    }
                }
            }
            if kept.connections == 0 && kept.held.is_empty() && kept.agent.is_none() {
                let _ = std::fs::remove_file(socket(&paths));
                std::process::exit(0);
            }
        });
    }
    0
}

/// Serves one connection; whether it ended with a goodbye (and what it released).
fn serve(stream: &UnixStream, shared: &Shared, paths: &Paths, id: u64) -> Option<bool> {
    let mut reader = Reader::default();
    loop {
        let (line, mut fds) = reader.next(stream).ok()??;
        let Ok(ask) = serde_json::from_slice::<Ask>(&line) else { return None };
        let mut kept = lock(shared);
        let mut answer = Answer::default();
        let mut attach = None;
        let mut bye = None;
        match ask {
            Ask::Hello { exe, pid } => {
                kept.generation += 1;
                kept.agent = Some((id, pid, exe));
                super::daemon::log(paths, &format!("keeper: agent pid {pid} serves the front door"));
            }
            Ask::Listen(addr) => match held_or_bound(&mut kept.held, addr) {
                Ok(socket) => attach = Some(socket),
                Err(e) => answer.error = Some((e.raw_os_error(), e.to_string())),
            },
            Ask::Adopt(addr) => match fds.pop() {
                Some(fd) => {
                    kept.held.entry(addr).or_insert_with(|| TcpListener::from(fd));
                }
                None => answer.error = Some((None, "no socket came with it".into())),
            },
            Ask::Close(addr) => {
                kept.held.remove(&addr);
            }
            Ask::Bye { release } => {
                if release {
                    kept.held.clear();
                }
                bye = Some(release);
            }
        }
        answer.held = kept.held.keys().copied().collect();
        drop(kept);
        if send(stream, &answer, attach.as_ref().map(AsFd::as_fd)).is_err() {
            return bye;
        }
        if bye.is_some() {
            return bye;
        }
    }
}

/// Whether `pid` has exited (looked at for a moment: its connection closes as it
/// exits, a little before it is gone).
fn gone(pid: u32) -> bool {
    for _ in 0..50 {
        if !super::procs::alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(4));
    }
    false
}

/// The socket held for `addr`, or a new one bound there.
fn held_or_bound(held: &mut HashMap<SocketAddr, TcpListener>, addr: SocketAddr) -> std::io::Result<TcpListener> {
    if let Some(socket) = held.get(&addr) {
        return socket.try_clone();
    }
    let socket = bind(addr)?;
    let copy = socket.try_clone()?;
    held.insert(addr, socket);
    Ok(copy)
}

/// A listening socket on `addr` with a long queue.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, BACKLOG)?;
    Ok(TcpListener::from(fd))
}

/// Starts the agent again after `after`, unless another one says hello first; tries a
/// few times, further apart, when the one started exits without a word.
fn plan_restart(shared: &Shared, paths: &Paths, exe: PathBuf, generation: u64, after: Duration) {
    let (shared, paths) = (Arc::clone(shared), paths.clone());
    std::thread::spawn(move || {
        let mut pause = after;
        for _ in 0..6 {
            std::thread::sleep(pause);
            pause = (pause * 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
            {
                let kept = lock(&shared);
                if kept.generation != generation || kept.agent.is_some() || kept.held.is_empty() {
                    return;
                }
            }
            let child = std::process::Command::new(&exe)
                .args(["agent", "run", "--state"])
                .arg(&paths.state)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .current_dir("/")
                .spawn();
            match child {
                // It runs until it exits: then, if it never said hello, once more.
                Ok(mut child) => {
                    let _ = child.wait();
                }
                Err(e) => super::daemon::log(&paths, &format!("keeper: cannot start the agent: {e}")),
            }
        }
        super::daemon::log(&paths, "keeper: the agent would not start; the front door waits for the next ferry");
    });
}

/// Reads lines and the sockets attached to them.
#[derive(Default)]
struct Reader {
    buffer: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Reader {
    /// The next line and what came with it; `None` at the end of the stream.
    fn next(&mut self, stream: &UnixStream) -> std::io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Ok(Some((line, std::mem::take(&mut self.fds))));
            }
            if self.buffer.len() > MAX_LINE {
                return Err(std::io::Error::other("a message too long"));
            }
            let mut chunk = [0u8; 4096];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let got = rustix::net::recvmsg(
                stream,
                &mut [IoSliceMut::new(&mut chunk)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )?;
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = message {
                    self.fds.extend(fds);
                }
            }
            if got.bytes == 0 {
                return Ok(None);
            }
            self.buffer.extend_from_slice(&chunk[..got.bytes]);
        }
    }
}

/// Sends one message as a line, with a socket attached.
fn send(stream: &UnixStream, message: &impl Serialize, fd: Option<std::os::fd::BorrowedFd<'_>>) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let fds: Vec<_> = fd.into_iter().collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    let mut sent = rustix::net::sendmsg(stream, &[IoSlice::new(&line)], &mut control, SendFlags::NOSIGNAL)?;
    // The socket went with the first bytes; the rest follows plainly.
    while sent < line.len() {
        let more = rustix::net::send(stream, &line[sent..], SendFlags::NOSIGNAL)?;
        if more == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        sent += more;
    }
    Ok(())
}

/// Starts a keeper for `paths` and connects to it.
fn start(paths: &Paths) -> std::io::Result<UnixStream> {
    let path = socket(paths);
    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new(exe)
        .args(["agent", "keep", "--state"])
        .arg(&paths.state)
        // The agents it starts again begin from the limit this one began with.
        .env("FERRY_NOFILE_AT_START", super::nofile_at_start())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .current_dir("/")
        .spawn()?;
    // It is the agent's child until it exits: reaped on a thread, so that a
    // keeper that exits does not stay a zombie.
    let mut pause = Duration::from_millis(1);
    let deadline = std::time::Instant::now() + ANSWER_TIMEOUT;
    let stream = loop {
        if let Ok(stream) = UnixStream::connect(&path) {
            break stream;
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Another keeper may have won the lock meanwhile.
            if let Ok(stream) = UnixStream::connect(&path) {
                break stream;
            }
            return Err(std::io::Error::other(format!("the keeper exited at start ({status})")));
        }
        if std::time::Instant::now() > deadline {
            return Err(std::io::Error::other("the keeper did not start listening"));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(stream)
}

/// An agent's connection to the keeper.
pub struct Client {
    stream: UnixStream,
    reader: Reader,
}

impl Client {
    /// Connects to the keeper of `paths`, starting one when there is none, and says
    /// hello as the agent to start again; with what the keeper holds.
    pub fn connect(paths: &Paths) -> std::io::Result<(Client, Vec<SocketAddr>)> {
        let path = socket(paths);
        let stream = UnixStream::connect(&path).or_else(|_| start(paths))?;
        stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        let mut client = Client { stream, reader: Reader::default() };
        let exe = std::env::current_exe()?;
        let (answer, _) = client.ask(&Ask::Hello { pid: std::process::id(), exe }, None)?;
        Ok((client, answer.held))
    }

    /// Sends `ask` (with a socket attached) and reads the answer, with the socket that
    /// came with it.
    pub fn ask(
        &mut self,
        ask: &Ask,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> std::io::Result<(Answer, Option<OwnedFd>)> {
        send(&self.stream, ask, fd)?;
        let Some((line, mut fds)) = self.reader.next(&self.stream)? else {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the keeper left"));
        };
        let answer: Answer = serde_json::from_slice(&line).map_err(std::io::Error::other)?;
        Ok((answer, fds.pop()))
    }

    /// Whether the keeper is still there (its end of the connection not closed).
    pub fn alive(&self) -> bool {
        let mut byte = [0u8; 1];
        match rustix::net::recv(
            &self.stream,
            &mut byte,
            rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
        ) {
            Ok((0, _)) => false,
            Ok(_) => true,
            Err(e) => e == rustix::io::Errno::AGAIN,
        }
    }
}
