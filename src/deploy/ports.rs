//! Choosing a port for a new instance. Ports stay with an instance for its life
//! (old and new versions never run side by side on one instance), so only new
//! instances need one: not recorded for another instance on that host, not listening
//! there now, and not handed out earlier in this run (several "hosts" may be one
//! machine, as on the local target or in tests).

use std::collections::BTreeSet;
use std::net::TcpListener;

/// The range remote instance ports are drawn from: below Linux's ephemeral range
/// (32768-60999), so an outgoing connection or an SSH port forward on the same machine
/// can never be handed a port an instance is about to bind.
pub const REMOTE_PORTS: std::ops::Range<u16> = 20_000..32_000;

#[derive(Debug, Default)]
pub struct PortPicker {
    /// `(host, port)` recorded or listening on a host.
    taken: BTreeSet<(String, u16)>,
    /// Every port handed out by this picker, whatever the host.
    picked: BTreeSet<u16>,
}

impl PortPicker {
    pub fn new(taken: BTreeSet<(String, u16)>) -> Self {
        Self { taken, picked: BTreeSet::new() }
    }

    fn free(&self, host: &str, port: u16) -> bool {
        !self.picked.contains(&port) && !self.taken.contains(&(host.to_string(), port))
    }

    /// A port for a new instance on `host`; 0 if none could be found.
    pub fn pick(&mut self, host: &str, local: bool) -> u16 {
        let port = if local { self.pick_local(host) } else { self.pick_remote(host) };
        if port != 0 {
            self.picked.insert(port);
        }
        port
    }

    /// This machine: let the kernel name a free port, skipping recorded ones.
    fn pick_local(&self, host: &str) -> u16 {
        for _ in 0..64 {
            let Ok(port) = TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()).map(|a| a.port()) else {
                break;
            };
            if self.free(host, port) && !self.taken.iter().any(|(_, p)| *p == port) {
                return port;
            }
        }
        0
    }

    /// Another machine: start at a random point of the range so that two ferry runs
    /// against one machine rarely meet, then walk to a free port.
    fn pick_remote(&self, host: &str) -> u16 {
        let span = REMOTE_PORTS.end - REMOTE_PORTS.start;
        let start = random_u16() % span;
        (0..span).map(|i| REMOTE_PORTS.start + (start + i) % span).find(|p| self.free(host, *p)).unwrap_or(0)
    }
}

fn random_u16() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    u16::try_from(hasher.finish() & 0xffff).unwrap_or(0)
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
    fn remote_picks_avoid_taken_ports_and_never_repeat_in_a_run() {
        let taken: BTreeSet<(String, u16)> =
            REMOTE_PORTS.map(|p| ("h".to_string(), p)).filter(|(_, p)| *p != 20_005 && *p != 20_006).collect();
        let mut picker = PortPicker::new(taken);
        let first = picker.pick("h", false);
        let second = picker.pick("h", false);
        assert_eq!(BTreeSet::from([first, second]), BTreeSet::from([20_005, 20_006]));
        assert_eq!(picker.pick("h", false), 0, "nothing left on h");
        let other = picker.pick("other", false);
        assert!(other != first && other != second && other != 0);
    }
}
