//! Processes on this machine, as the agent sees them: who is alive (a zombie is not),
//! when a process started (so a reused pid is never taken for an instance), which
//! processes carry an instance's mark in their environment (what it started, daemons
//! included), signals by name, and the one reaper of the agent's children. Every
//! child the agent starts is spawned through [`Reaper::spawn`], which hears its exit:
//! a single owner of `waitpid`, so statuses are never stolen or lost.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};

use rustix::process::{Pid, Signal, WaitOptions};
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Code(i32),
    Signal(i32),
    /// It was not the agent's child (adopted): how it ended is not known.
    Unknown,
}

impl Ended {
    pub fn describe(self) -> String {
        match self {
            Ended::Code(code) => format!("exit {code}"),
            Ended::Signal(signal) => format!("signal {signal} ({})", signal_name(signal)),
            Ended::Unknown => "exited".to_string(),
        }
    }

    pub fn success(self) -> bool {
        self == Ended::Code(0)
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        6 => "SIGABRT",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => "signal",
    }
}

/// The signal named `SIGTERM`, `TERM`, `INT`...; SIGTERM for a name ferry does not know.
pub fn signal(name: &str) -> Signal {
    match name.trim_start_matches("SIG") {
        "INT" => Signal::INT,
        "QUIT" => Signal::QUIT,
        "KILL" => Signal::KILL,
        "HUP" => Signal::HUP,
        "USR1" => Signal::USR1,
        "USR2" => Signal::USR2,
        "ABRT" => Signal::ABORT,
        _ => Signal::TERM,
    }
}

pub fn pid(raw: u32) -> Option<Pid> {
    i32::try_from(raw).ok().and_then(Pid::from_raw)
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold spaces and
/// parentheses): state is the first, the start time the 20th.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Whether `pid` is a live process (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z" && s != "X"))
}

/// When `pid` started, in clock ticks since boot.
pub fn starttime(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`): a different one means the
/// machine rebooted since.
pub fn boot_id() -> String {
    static BOOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
    })
    .clone()
}

/// Whether `pid` is still the process that started at `starttime`.
pub fn same_process(pid: u32, starttime: u64) -> bool {
    pid != 0 && alive(pid) && self::starttime(pid) == Some(starttime)
}

/// Whether any live process is in process group `pgid`.
pub fn group_alive(pgid: u32) -> bool {
    let Some(group) = pid(pgid) else { return false };
    if rustix::process::test_kill_process_group(group).is_err() {
        return false;
    }
    // Zombies keep a group "alive" for kill(0); look closer.
    processes().any(|p| stat_fields(p).is_some_and(|f| f.get(2).is_some_and(|g| g == &pgid.to_string()) && f[0] != "Z"))
}

/// Every process of this machine by pid.
pub fn processes() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc").into_iter().flatten().flatten().filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// Live processes whose environment carries `FERRY_INSTANCE_ID=<id>`: everything an
/// instance started, daemons that left its session included. Only this account's
/// processes can be read, which are the only ones it could have started.
pub fn marked(id: &str) -> Vec<u32> {
    marked_with("FERRY_INSTANCE_ID", id)
}

/// Live processes (other than the agent) whose environment has `var=value`.
pub fn marked_with(var: &str, value: &str) -> Vec<u32> {
    let mark = format!("{var}={value}");
    let me = std::process::id();
    processes()
        .filter(|p| *p != me && alive(*p))
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == mark.as_bytes()))
        })
        .collect()
}

/// Of `pids`, the one leading its own session whose parent is none of them: how an
/// instance's process is told from what it started (every instance is launched in a
/// session of its own; a helper it started that called `setsid` has it as parent).
pub fn session_leader(pids: &[u32]) -> Option<u32> {
    pids.iter().copied().find(|p| {
        stat_fields(*p).is_some_and(|f| {
            let leads = f.get(3).is_some_and(|sid| sid == &p.to_string());
            let parent = f.get(1).and_then(|ppid| ppid.parse::<u32>().ok()).unwrap_or(0);
            leads && !pids.contains(&parent)
        })
    })
}

/// A process and everything it started that was seen while it ran, by pid and start
/// time: what escapes its process group and its environment mark (a child that called
/// `setsid` and cleared its environment) is still found, as long as it was seen
/// before its parent went.
#[derive(Debug, Default)]
pub struct Family {
    root: u32,
    seen: std::collections::BTreeMap<u32, u64>,
}

impl Family {
    pub fn new(root: u32) -> Self {
        let mut family = Self { root, seen: std::collections::BTreeMap::new() };
        family.look();
        family
    }

    /// Adds the root's live descendants (children of anything already seen).
    pub fn look(&mut self) {
        let parents: Vec<(u32, u32, u64)> = processes()
            .filter_map(|p| {
                let f = stat_fields(p)?;
                Some((p, f.get(1)?.parse().ok()?, f.get(19)?.parse().ok()?))
            })
            .collect();
        if let Some(start) = starttime(self.root) {
            self.seen.entry(self.root).or_insert(start);
        }
        // A parent counts only while it is still the process that was seen (its pid
        // may have gone to another since).
        let started: std::collections::BTreeMap<u32, u64> = parents.iter().map(|(p, _, s)| (*p, *s)).collect();
        loop {
            let before = self.seen.len();
            for (pid, ppid, start) in &parents {
                let parent_is_ours = self.seen.get(ppid).is_some_and(|s| started.get(ppid) == Some(s));
                if parent_is_ours && !self.seen.contains_key(pid) {
                    self.seen.insert(*pid, *start);
                }
            }
            if self.seen.len() == before {
                break;
            }
        }
    }

    /// Sends `signal` to every member still running as the process that was seen.
    pub fn kill(&self, signal: Signal) {
        for (pid, start) in &self.seen {
            if same_process(*pid, *start) {
                kill(*pid, signal);
            }
        }
    }
}

pub fn kill_group(pgid: u32, signal: Signal) {
    if let Some(group) = pid(pgid) {
        let _ = rustix::process::kill_process_group(group, signal);
    }
}

pub fn kill(raw: u32, signal: Signal) {
    if let Some(p) = pid(raw) {
        let _ = rustix::process::kill_process(p, signal);
    }
}

/// Who waits for a child's exit.
type Waiters = HashMap<u32, oneshot::Sender<Ended>>;

/// The one owner of `waitpid` in the agent.
#[derive(Clone, Default)]
pub struct Reaper {
    waiters: Arc<Mutex<Waiters>>,
    /// Also reap children nobody waits for (the agent, a child subreaper, inherits
    /// orphans); without it only the children spawned here are waited for.
    orphans: bool,
}

impl Reaper {
    /// The reaper of the agent process, which reaps its orphans too.
    pub fn for_agent() -> Self {
        Self { waiters: Arc::default(), orphans: true }
    }

    /// Spawns `command`; the receiver hears how it ended. Registered before the child
    /// can be reaped, so no exit is missed.
    pub fn spawn(&self, command: &mut Command) -> std::io::Result<(Child, oneshot::Receiver<Ended>)> {
        let mut waiters = self.waiters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let child = command.spawn()?;
        let (tx, rx) = oneshot::channel();
        waiters.insert(child.id(), tx);
        Ok((child, rx))
    }

    /// Reaps every child that has ended and tells whoever waits for it. Orphans that
    /// were reparented to the agent (it is a child subreaper) are reaped silently.
    pub fn reap(&self) {
        let mut waiters = self.waiters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let ended = |status: rustix::process::WaitStatus| match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => Some(Ended::Code(code)),
            (None, Some(signal)) => Some(Ended::Signal(signal)),
            (None, None) => None,
        };
        if self.orphans {
            while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
                let raw = u32::try_from(pid.as_raw_pid()).unwrap_or(0);
                if let (Some(ended), Some(waiter)) = (ended(status), waiters.remove(&raw)) {
                    let _ = waiter.send(ended);
                }
            }
            return;
        }
        let mine: Vec<u32> = waiters.keys().copied().collect();
        for raw in mine {
            if let Ok(Some((_, status))) = rustix::process::waitpid(pid(raw), WaitOptions::NOHANG) {
                if let (Some(ended), Some(waiter)) = (ended(status), waiters.remove(&raw)) {
                    let _ = waiter.send(ended);
                }
            }
        }
    }

    /// Reaps whenever a child ends, for as long as the agent runs.
    pub async fn run(self) {
        let Ok(mut children) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) else { return };
        loop {
            self.reap();
            // A child that ended between two signals is reaped at the next one, or at
            // the next tick: signals may be merged.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), children.recv()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_with_a_start_time() {
        let me = std::process::id();
        assert!(alive(me));
        let started = starttime(me).unwrap();
        assert!(same_process(me, started));
        assert!(!same_process(me, started + 1), "another start time is another process");
        assert!(!alive(u32::MAX - 7));
    }

    #[test]
    fn signal_names_are_read_with_or_without_sig() {
        assert_eq!(signal("SIGINT"), Signal::INT);
        assert_eq!(signal("INT"), Signal::INT);
        assert_eq!(signal("bogus"), Signal::TERM);
        assert_eq!(Ended::Signal(9).describe(), "signal 9 (SIGKILL)");
    }

    #[tokio::test]
    async fn the_reaper_tells_a_child_how_it_ended() {
        let reaper = Reaper::default();
        let (_child, ended) = reaper.spawn(Command::new("sh").args(["-c", "exit 3"])).unwrap();
        let task = tokio::spawn(reaper.clone().run());
        assert_eq!(ended.await.unwrap(), Ended::Code(3));
        task.abort();
    }
}
