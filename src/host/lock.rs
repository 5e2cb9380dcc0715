//! The deploy lock: a `lock/` directory created atomically with `mkdir` on every host
//! of the operation, holding who took it. It is a lease: the holder touches it every
//! few seconds, and a lease that is not refreshed for [`STALE_AFTER`], or whose holder
//! process is gone from this machine, is stale and may be taken over, so a killed
//! deploy never needs a manual unlock.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::proto::{Io, LockReply, Reply, Request};
use super::{Host, HostError};

pub const STALE_AFTER: Duration = Duration::from_secs(30);
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    pub user: String,
    pub machine: String,
    pub pid: u32,
    pub command: String,
    pub since: String,
    pub token: String,
}

impl Holder {
    /// The holder describing this ferry process.
    pub fn me(command: &str) -> Self {
        let pid = std::process::id();
        Self {
            user: current_user(),
            machine: this_machine(),
            pid,
            command: command.to_string(),
            since: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            token: format!("{pid}-{}", super::now_ms()),
        }
    }

    pub fn describe(&self) -> String {
        format!("{}@{} (pid {}, `{}`, since {})", self.user, self.machine, self.pid, self.command, self.since)
    }
}

/// A lock found on a host: its holder (if readable) and seconds since last refresh.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Held {
    pub holder: Option<Holder>,
    pub age_secs: u64,
}

impl Held {
    /// Why this lock may be taken over, or `None` while its holder is live.
    pub fn stale_reason(&self) -> Option<String> {
        if self.age_secs >= STALE_AFTER.as_secs() {
            return Some(format!("its lease was last refreshed {}s ago", self.age_secs));
        }
        let holder = self.holder.as_ref()?;
        if holder.machine == this_machine() && !process_alive(holder.pid) {
            return Some(format!("process {} on {} is gone", holder.pid, holder.machine));
        }
        None
    }

    pub fn describe(&self) -> String {
        match &self.holder {
            Some(h) => h.describe(),
            None => "an unknown holder".to_string(),
        }
    }
}

/// Who runs ferry: `$USER`, `$LOGNAME`, else our uid's name in `/etc/passwd` (read
/// here, not by running `id`: this is asked on the way to every deploy's first step).
pub fn current_user() -> String {
    static USER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    USER.get_or_init(|| {
        std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .filter(|u| !u.is_empty())
            .or_else(user_from_passwd)
            .or_else(|| {
                // A user the passwd file does not list (LDAP, SSSD): ask `id`.
                let out = std::process::Command::new("id").arg("-un").output().ok()?;
                let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
                (out.status.success() && !name.is_empty()).then_some(name)
            })
            .unwrap_or_else(|| "unknown".into())
    })
    .clone()
}

fn user_from_passwd() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)? == uid && !name.is_empty()).then(|| name.to_string())
    })
}

pub fn this_machine() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")) else {
        return false;
    };
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

pub enum Attempt {
    /// Taken; the host's state as read under it.
    Acquired(Box<super::HostState>),
    Held(Held),
}

impl Host {
    pub async fn lock_acquire(&self, holder: &Holder) -> Result<Attempt, HostError> {
        match self.call(Request::LockAcquire { holder: holder.clone() }, Io::default()).await? {
            Reply::Lock(LockReply::Acquired(state)) => Ok(Attempt::Acquired(state)),
            Reply::Lock(LockReply::Held(held)) => Ok(Attempt::Held(held)),
            other => Err(self.unexpected("taking the lock", &other)),
        }
    }

    /// Replaces a stale lock, only if it is still the one that was judged stale;
    /// returns the host's state read under it, or `None` when someone else got it.
    pub async fn lock_takeover(&self, stale: &Held, holder: &Holder) -> Result<Option<super::HostState>, HostError> {
        let request =
            Request::LockTakeover { stale: stale.holder.as_ref().map(|h| h.token.clone()), holder: holder.clone() };
        match self.call(request, Io::default()).await? {
            Reply::Lock(LockReply::Acquired(observed)) => Ok(Some(*observed)),
            Reply::Lock(LockReply::Lost | LockReply::Held(_)) => Ok(None),
            other => Err(self.unexpected("taking over the lock", &other)),
        }
    }

    /// Refreshes the lease; false when the lock is no longer ours.
    pub async fn lock_refresh(&self, token: &str) -> Result<bool, HostError> {
        match self.call(Request::LockRefresh { token: token.to_string() }, Io::default()).await? {
            Reply::Flag(ours) => Ok(ours),
            other => Err(self.unexpected("refreshing the lock", &other)),
        }
    }

    /// Removes the lock if `token` holds it; with `None`, removes any lock.
    pub async fn lock_release(&self, token: Option<&str>) -> Result<(), HostError> {
        match self.call(Request::LockRelease { token: token.map(str::to_string) }, Io::default()).await? {
            Reply::Done => Ok(()),
            other => Err(self.unexpected("releasing the lock", &other)),
        }
    }
}

/// A lock held on a set of hosts, refreshed in the background until released.
pub struct Guard {
    hosts: Arc<Vec<Host>>,
    token: String,
    refresher: tokio::task::JoinHandle<()>,
    /// Set when a refresh finds the lock is no longer ours.
    lost: Lease,
    /// Each host's state as read when its lock was taken.
    observed: BTreeMap<String, super::HostState>,
    /// Set once the hosts released the lock themselves (in the same round trip as
    /// the last steps of an operation).
    released: bool,
}

impl Guard {
    pub fn new(hosts: Vec<Host>, token: String, observed: BTreeMap<String, super::HostState>) -> Self {
        let hosts = Arc::new(hosts);
        let lost = Lease::default();
        let refresher = tokio::spawn(refresh_loop(Arc::clone(&hosts), token.clone(), lost.clone()));
        Self { hosts, token, refresher, lost, observed, released: false }
    }

    /// Every host's state read under the lock, in the round trip that took it: what
    /// an operation plans from.
    pub fn observed(&self) -> &BTreeMap<String, super::HostState> {
        &self.observed
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// A handle that tells whether the lock was taken over by someone else.
    pub fn lease(&self) -> Lease {
        self.lost.clone()
    }

    /// Stops refreshing the lease, before the hosts give the lock back themselves
    /// (see [`Host::finish`]), so that no refresh races the removal.
    pub fn stop_refreshing(&self) {
        self.refresher.abort();
    }

    /// Every host gave the lock back itself: [`Guard::release`] has nothing left to do.
    pub fn mark_released(&mut self) {
        self.refresher.abort();
        self.released = true;
    }

    pub async fn release(self) {
        self.refresher.abort();
        if self.released {
            return;
        }
        // A lock left behind here is only an inconvenience: it goes stale and the
        // next operation takes it over with a warning.
        let token = self.token.clone();
        super::on_each(self.hosts.iter().cloned(), |host| {
            let token = token.clone();
            async move { super::bookkeeping(&host.name, "releasing the lock", host.lock_release(Some(&token))).await }
        })
        .await;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

/// Whether the lock an operation holds is still its own: a refresh that finds it taken
/// over (another operation judged the lease stale) marks it lost, and the operation
/// must stop changing things.
#[derive(Debug, Clone, Default)]
pub struct Lease(Arc<std::sync::atomic::AtomicBool>);

impl Lease {
    pub fn lost(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn mark_lost(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn refresh_loop(hosts: Arc<Vec<Host>>, token: String, lease: Lease) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        // All hosts at once, each bounded, so one slow host cannot let the others'
        // leases run out.
        let mut refreshes = tokio::task::JoinSet::new();
        for host in hosts.iter() {
            let (host, token) = (host.clone(), token.clone());
            refreshes.spawn(async move { tokio::time::timeout(REFRESH_EVERY, host.lock_refresh(&token)).await });
        }
        while let Some(result) = refreshes.join_next().await {
            if matches!(result, Ok(Ok(Ok(false)))) {
                lease.mark_lost();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_lease_is_stale() {
        let held = Held { holder: None, age_secs: 31 };
        assert!(held.stale_reason().unwrap().contains("31s"));
    }

    #[test]
    fn live_holder_on_this_machine_is_not_stale() {
        let held = Held { holder: Some(Holder::me("deploy")), age_secs: 2 };
        assert!(held.stale_reason().is_none());
    }

    #[test]
    fn dead_holder_on_this_machine_is_stale() {
        let mut holder = Holder::me("deploy");
        holder.pid = u32::MAX - 1;
        let held = Held { holder: Some(holder), age_secs: 2 };
        assert!(held.stale_reason().unwrap().contains("is gone"));
    }

    #[test]
    fn holder_on_another_machine_is_trusted_until_the_lease_runs_out() {
        let mut holder = Holder::me("deploy");
        holder.machine = "elsewhere.example".into();
        holder.pid = u32::MAX - 1;
        let held = Held { holder: Some(holder), age_secs: 29 };
        assert!(held.stale_reason().is_none());
    }
}
