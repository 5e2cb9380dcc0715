//! Choosing a port for a new instance. Ports stay with an instance for its life
//! (old and new versions never run side by side on one instance), so only new
//! instances need one: not recorded for another instance on that host, and, on this
//! machine, free right now.

use std::collections::BTreeSet;
use std::net::TcpListener;

/// Where SSH hosts' instance ports start, when the port cannot be probed from here.
pub const REMOTE_BASE_PORT: u16 = 20_000;

#[derive(Debug, Default)]
pub struct PortPicker {
    taken: BTreeSet<(String, u16)>,
}

impl PortPicker {
    pub fn new(taken: BTreeSet<(String, u16)>) -> Self {
        Self { taken }
    }

    /// A port for a new instance on `host`; 0 if none could be found.
    pub fn pick(&mut self, host: &str, local: bool) -> u16 {
        if local {
            // All local "hosts" share this machine, so a port is taken if any host has it.
            for _ in 0..64 {
                let Ok(listener) = TcpListener::bind(("127.0.0.1", 0)) else { break };
                let Ok(port) = listener.local_addr().map(|a| a.port()) else { break };
                drop(listener);
                if !self.taken.iter().any(|(_, p)| *p == port) {
                    self.taken.insert((host.to_string(), port));
                    return port;
                }
            }
            return 0;
        }
        let port = (REMOTE_BASE_PORT..u16::MAX).find(|p| !self.taken.contains(&(host.to_string(), *p))).unwrap_or(0);
        self.taken.insert((host.to_string(), port));
        port
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_picks_are_distinct_and_avoid_recorded_ports() {
        let mut picker = PortPicker::new(BTreeSet::new());
        let a = picker.pick("h", true);
        let b = picker.pick("h2", true);
        assert_ne!(a, 0);
        assert_ne!(a, b);
    }

    #[test]
    fn remote_picks_skip_recorded_ports_per_host() {
        let taken = BTreeSet::from([("h".to_string(), REMOTE_BASE_PORT)]);
        let mut picker = PortPicker::new(taken);
        assert_eq!(picker.pick("h", false), REMOTE_BASE_PORT + 1);
        assert_eq!(picker.pick("other", false), REMOTE_BASE_PORT);
    }
}
