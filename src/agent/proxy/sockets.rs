//! The front door's listening sockets: opened once per address and kept while any app
//! is served there. The keeper (`agent::keeper`) holds them too, so that they outlive
//! this agent: the next one takes them from it, and a connection made in between
//! waits instead of being refused. Without a keeper (it cannot be started), the agent
//! binds them itself.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use super::super::keeper::{self, Ask};
use super::super::paths::Paths;

/// The listening sockets of the agent's front doors.
#[derive(Clone)]
pub struct Sockets {
    state: Arc<Mutex<State>>,
}

struct State {
    paths: Paths,
    open: HashMap<SocketAddr, TcpListener>,
    keeper: Option<keeper::Client>,
    /// What the keeper said it holds, last time.
    held: Vec<SocketAddr>,
}

impl Sockets {
    pub fn new(paths: Paths) -> Self {
        Self { state: Arc::new(Mutex::new(State { paths, open: HashMap::new(), keeper: None, held: Vec::new() })) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A socket listening on `addr` (a copy of the one kept), opened if need be; the
    /// error says what to do about it.
    pub fn listen(&self, addr: SocketAddr) -> Result<TcpListener, String> {
        let mut state = self.lock();
        if let Some(socket) = state.open.get(&addr) {
            return socket.try_clone().map_err(|e| format!("listening on {addr}: {e}"));
        }
        let socket = match state.ask(&Ask::Listen(addr)) {
            Some((answer, fd)) => match (answer.error, fd) {
                (Some((Some(os), _)), _) => return Err(bind_error(addr, &std::io::Error::from_raw_os_error(os))),
                (Some((None, message)), _) => return Err(format!("listening on {addr}: {message}")),
                (None, Some(fd)) => TcpListener::from(fd),
                (None, None) => return Err(format!("listening on {addr}: the keeper sent no socket")),
            },
            None => TcpListener::bind(addr).map_err(|e| bind_error(addr, &e))?,
        };
        let copy = socket.try_clone().map_err(|e| format!("listening on {addr}: {e}"))?;
        state.open.insert(addr, socket);
        Ok(copy)
    }

    /// Stops listening on `addr`.
    pub fn close(&self, addr: SocketAddr) {
        let mut state = self.lock();
        state.open.remove(&addr);
        if state.keeper.is_some() {
            state.ask(&Ask::Close(addr));
        }
    }

    /// Makes sure a keeper holds every socket (starting one, when the last one is
    /// gone, and giving it the agent's copies), and lets go of what the keeper holds
    /// that no door of this agent uses (an app closed by an agent that died).
    pub fn tend(&self) {
        let mut state = self.lock();
        let needed = !state.open.is_empty() || keeper::socket(&state.paths).exists();
        if !needed || (state.keeper.as_ref().is_some_and(keeper::Client::alive)) {
            return;
        }
        state.keeper = None;
        if state.connect() {
            drop(state);
            self.prune();
        }
    }

    /// Lets go of what the keeper holds that no door of this agent uses (an app
    /// closed by an agent that died before it told the keeper).
    pub fn prune(&self) {
        let mut state = self.lock();
        if state.keeper.is_none() {
            return;
        }
        let unused: Vec<SocketAddr> = state.held.iter().filter(|a| !state.open.contains_key(a)).copied().collect();
        for addr in unused {
            state.ask(&Ask::Close(addr));
        }
    }

    /// The agent leaves: the keeper is told (with `release`, to let every socket go),
    /// and the agent's copies are closed.
    pub fn leave(&self, release: bool) {
        let mut state = self.lock();
        if state.keeper.is_some() {
            state.ask(&Ask::Bye { release });
        }
        state.keeper = None;
        state.open.clear();
    }
}

impl State {
    /// Asks the keeper (connecting first, and handing it every socket it lacks);
    /// `None` when no keeper can be had.
    fn ask(&mut self, ask: &Ask) -> Option<(keeper::Answer, Option<std::os::fd::OwnedFd>)> {
        if self.keeper.is_none() && !self.connect() {
            return None;
        }
        let client = self.keeper.as_mut()?;
        match client.ask(ask, None) {
            Ok((answer, fd)) => {
                self.held.clone_from(&answer.held);
                Some((answer, fd))
            }
            Err(e) => {
                super::super::daemon::log(&self.paths, &format!("the keeper did not answer: {e}"));
                self.keeper = None;
                None
            }
        }
    }

    /// Connects to the keeper (starting one if need be) and hands it every socket it
    /// lacks; whether there is one now.
    fn connect(&mut self) -> bool {
        match keeper::Client::connect(&self.paths) {
            Ok((mut client, mut held)) => {
                for (addr, socket) in &self.open {
                    if !held.contains(addr) {
                        if let Ok((answer, _)) = client.ask(&Ask::Adopt(*addr), Some(socket.as_fd())) {
                            held = answer.held;
                        }
                    }
                }
                self.held = held;
                self.keeper = Some(client);
                true
            }
            Err(e) => {
                super::super::daemon::log(
                    &self.paths,
                    &format!("no keeper for the front door's sockets ({e}): an agent restart will refuse connections"),
                );
                false
            }
        }
    }
}

/// Why `addr` cannot be listened on, and what to do.
pub fn bind_error(addr: SocketAddr, e: &std::io::Error) -> String {
    let port = addr.port();
    match e.kind() {
        std::io::ErrorKind::PermissionDenied if port < 1024 => format!(
            "this account may not listen on port {port} (ports below 1024 need a privilege): allow it for every \
             account with `sudo sysctl -w net.ipv4.ip_unprivileged_port_start={port}` (and the same line in \
             /etc/sysctl.d/ to keep it after a reboot), or serve another port with `[ferry.proxy.ports] {port} = {}`",
            u32::from(port) + 8000
        ),
        std::io::ErrorKind::AddrInUse => format!(
            "{addr} is already in use by {}: stop it, or serve another port with \
             `[ferry.proxy.ports] {port} = ...`",
            super::super::files::holder_of(port).unwrap_or_else(|| "another program".into())
        ),
        std::io::ErrorKind::AddrNotAvailable => {
            format!("{} is not an address of this host: set `[ferry.proxy] bind` to one it has", addr.ip())
        }
        _ => format!("listening on {addr}: {e}"),
    }
}
