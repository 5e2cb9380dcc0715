//! The front door's listening sockets: opened once per address and kept while any app
//! is served there.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

/// The listening sockets of the agent's front doors.
#[derive(Clone, Default)]
pub struct Sockets {
    open: Arc<Mutex<HashMap<SocketAddr, TcpListener>>>,
}

impl Sockets {
    /// A socket listening on `addr` (a copy of the one kept), opened if need be; the
    /// error says what to do about it.
    pub fn listen(&self, addr: SocketAddr) -> Result<TcpListener, String> {
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(socket) = open.get(&addr) {
            return socket.try_clone().map_err(|e| format!("listening on {addr}: {e}"));
        }
        let socket = TcpListener::bind(addr).map_err(|e| bind_error(addr, &e))?;
        let copy = socket.try_clone().map_err(|e| format!("listening on {addr}: {e}"))?;
        open.insert(addr, socket);
        Ok(copy)
    }

    /// Stops listening on `addr`.
    pub fn close(&self, addr: SocketAddr) {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&addr);
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
            "{addr} is already in use by another program: stop it, or serve another port with \
             `[ferry.proxy.ports] {port} = ...`"
        ),
        std::io::ErrorKind::AddrNotAvailable => {
            format!("{} is not an address of this host: set `[ferry.proxy] bind` to one it has", addr.ip())
        }
        _ => format!("listening on {addr}: {e}"),
    }
}
