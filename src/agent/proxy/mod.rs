//! The front door: a reverse proxy inside the agent, on the public ports of every app
//! the agent serves. Each app has a routing table on the host (the instances that take
//! traffic); a request goes to the instance of the table that passes its checks and
//! has the fewest requests outstanding. A switch of the table is atomic; an instance
//! taken out of it is drained (its requests in flight finish, its upgraded connections
//! get a grace period) before it is stopped. HTTP doors speak HTTP/1.1 and HTTP/2 on
//! one listener; TCP doors relay each connection to one instance.
//!
//! The table and the doors are written to the app's directory (atomically) and read
//! back by the next agent, which checks every entry against what runs.

mod http;
mod sockets;
mod tls;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::host::proto::{Door, DoorKind, TlsFiles};

use super::files::App;
use super::paths::Paths;
use super::supervisor::{Phase, Status, Supervisor};

pub use sockets::Sockets;

/// How long a request with nowhere to go is held, waiting for an instance to pass its
/// checks (an agent restarting, the only instance restarting), before a 503.
const HOLD: Duration = Duration::from_secs(10);
/// How often a held request looks again.
const HOLD_POLL: Duration = Duration::from_millis(10);
/// How long a leaving agent lets connections it accepted last send their first
/// request before it closes the idle ones.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);
/// The longest a drained instance's plain requests are waited for.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Every front door of the agent.
#[derive(Clone)]
pub struct FrontDoor {
    inner: Arc<Inner>,
}

struct Inner {
    paths: Paths,
    supervisor: Supervisor,
    sockets: Sockets,
    /// By listening address: who is served there.
    listeners: Mutex<HashMap<SocketAddr, Listener>>,
    /// By app directory.
    sites: Mutex<HashMap<PathBuf, Arc<Site>>>,
    /// Every HTTP connection, to close them gracefully when the agent leaves.
    graceful: http::Graceful,
}

struct Listener {
    kind: DoorKind,
    /// The certificate files of a TLS door, and redirecting to HTTPS: a door of
    /// another shape on the same address is another listener.
    tls: Option<TlsFiles>,
    redirect_https: Option<u16>,
    /// What TLS connections are accepted with (reloaded from the files each time the
    /// doors are opened, so a renewed certificate is served from the next deploy).
    acceptor: tls::Acceptor,
    claims: Arc<RwLock<Arc<Vec<Claim>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    fn same_shape(&self, door: &Door) -> bool {
        self.kind == door.kind && self.tls == door.tls && self.redirect_https == door.redirect_https
    }

    fn claims(&self) -> Arc<Vec<Claim>> {
        Arc::clone(&self.claims.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// An app served on a listener.
#[derive(Clone)]
struct Claim {
    site: Arc<Site>,
    hosts: Vec<String>,
    /// The region of the door (`Fly-Region`).
    region: String,
    /// The service it serves when not the first: each instance's port for it.
    target: Option<u16>,
    /// The process groups it routes to; empty: every instance.
    groups: Arc<Vec<String>>,
}

/// A set of instances, switched whole.
type Backends = Arc<Vec<Arc<Backend>>>;

/// Instances beside the table that take a share of the clients.
struct Canary {
    set: Backends,
    weight: u8,
    /// When it stops taking clients whatever happens (a deploy killed while it
    /// watched leaves no canary behind).
    until: Instant,
}

/// One app's routing on this host.
pub struct Site {
    app: App,
    supervisor: Supervisor,
    /// The instances that take traffic.
    table: RwLock<Arc<Vec<Arc<Backend>>>>,
    /// Instances that answer the preview header only (a new release before its
    /// switch); not kept on disk.
    preview: RwLock<Arc<Vec<Arc<Backend>>>>,
    /// A canary: instances beside the table that take this percentage of clients.
    canary: RwLock<Option<Canary>>,
    /// In maintenance: the message every HTTP request is answered with (503).
    maintenance: RwLock<Option<Arc<str>>>,
    /// Backends by instance id, kept while requests to them are in flight.
    known: Mutex<HashMap<String, Arc<Backend>>>,
    turn: AtomicUsize,
}

/// Where a request is sent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    Table,
    /// The preview set (the `Ferry-Preview` header), else the table.
    Preview,
    /// The canary set, else the table.
    Canary,
}

/// One instance as the front door sees it.
pub struct Backend {
    id: String,
    status: watch::Receiver<Status>,
    /// Requests in flight and upgraded connections open.
    inflight: AtomicUsize,
    /// Requests it answered through the front door, and errors among them (5xx, or
    /// no answer): what a canary is judged by.
    answered: AtomicU64,
    errors: AtomicU64,
    /// When a connection to it was refused (ms since the epoch): it takes nothing more
    /// until a check passes after that.
    refused_at: AtomicU64,
    /// Set to cut its upgraded connections at the end of a drain.
    cut: watch::Sender<bool>,
    /// Being stopped in place (it stays in the table, to take traffic again once its
    /// next process passes its checks).
    draining: std::sync::atomic::AtomicBool,
}

/// What maintenance looks like on disk (`maintenance.json`).
#[derive(Debug, Serialize, Deserialize)]
struct Maintenance {
    message: String,
}

fn maintenance_path(app: &App) -> PathBuf {
    app.dir.join("maintenance.json")
}

fn read_maintenance(app: &App) -> Option<String> {
    let text = std::fs::read_to_string(maintenance_path(app)).ok()?;
    serde_json::from_str::<Maintenance>(&text).ok().map(|m| m.message)
}

/// What the routing table looks like on disk.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Table {
    routed: BTreeSet<String>,
}

impl FrontDoor {
    pub fn new(paths: Paths, supervisor: Supervisor, sockets: Sockets) -> Self {
        Self {
            inner: Arc::new(Inner {
                paths,
                supervisor,
                sockets,
                listeners: Mutex::new(HashMap::new()),
                sites: Mutex::new(HashMap::new()),
                graceful: http::Graceful::default(),
            }),
        }
    }

    fn site(&self, app: &App) -> Arc<Site> {
        let mut sites = lock(&self.inner.sites);
        let site = sites.entry(app.dir.clone()).or_insert_with(|| {
            Arc::new(Site {
                app: app.clone(),
                supervisor: self.inner.supervisor.clone(),
                table: RwLock::new(Arc::new(Vec::new())),
                preview: RwLock::new(Arc::new(Vec::new())),
                maintenance: RwLock::new(read_maintenance(app).map(Arc::from)),
                canary: RwLock::new(None),
                known: Mutex::new(HashMap::new()),
                turn: AtomicUsize::new(0),
            })
        });
        Arc::clone(site)
    }

    fn existing(&self, app: &App) -> Option<Arc<Site>> {
        lock(&self.inner.sites).get(&app.dir).cloned()
    }

    /// Brings back an app's doors and table as the last agent left them, checked:
    /// only instances the supervisor knows are routed.
    pub fn load(&self, app: &App) {
        let Some(doors) = read_doors(app) else { return };
        if let Err(e) = self.open(app, &doors) {
            super::daemon::log(&self.inner.paths, &format!("front door of {}: {e}", app.dir.display()));
            // A certificate that went missing since (a reboot, a renewal gone wrong)
            // closes its TLS door only, not the app's other doors.
            let (mut usable, dropped): (Vec<Door>, Vec<Door>) =
                doors.into_iter().partition(|d| d.tls.as_ref().is_none_or(|t| tls::load(t).is_ok()));
            for door in &mut usable {
                // Nobody serves the port it would redirect to: it serves plainly instead.
                if dropped.iter().any(|d| Some(d.listen.port()) == door.redirect_https) {
                    door.redirect_https = None;
                }
            }
            // Not recorded: the next agent tries the whole set again.
            if let Err(e) = self.open_doors(app, &usable, false) {
                super::daemon::log(&self.inner.paths, &format!("front door of {}: {e}", app.dir.display()));
            }
        }
    }

    /// Makes the app's doors exactly `doors`. Every listener is opened before anything
    /// changes, so a port that cannot be had leaves the app as it was.
    pub fn open(&self, app: &App, doors: &[Door]) -> Result<(), String> {
        self.open_doors(app, doors, true)
    }

    /// [`Self::open`]; `record`: the set is written down for the next agent.
    fn open_doors(&self, app: &App, doors: &[Door], record: bool) -> Result<(), String> {
        // Certificates are read first: a file that cannot be read changes nothing.
        let mut configs = HashMap::new();
        for door in doors {
            if let Some(files) = &door.tls {
                configs.insert(door.listen, tls::load(files)?);
            }
        }
        let mut listeners = lock(&self.inner.listeners);
        // A port of this app alone that changes kind (HTTP and TCP, TLS or not) is
        // opened again.
        let changed: Vec<SocketAddr> = doors
            .iter()
            .filter(|door| {
                listeners
                    .get(&door.listen)
                    .is_some_and(|l| !l.same_shape(door) && l.claims().iter().all(|c| c.site.app.dir == app.dir))
            })
            .map(|door| door.listen)
            .collect();
        for addr in changed {
            self.close_listener(&mut listeners, addr);
        }
        for door in doors {
            if let Some(listener) = listeners.get(&door.listen) {
                if listener.kind != door.kind {
                    return Err(format!("{} is already a {:?} door of another app", door.listen, listener.kind));
                }
                if !listener.same_shape(door) {
                    return Err(format!(
                        "{} is already a door of another app with other TLS settings; a TLS port is not shared between apps yet",
                        door.listen
                    ));
                }
                let taken = listener.claims().iter().any(|c| {
                    c.site.app.dir != app.dir && (door.kind == DoorKind::Tcp || overlaps(&c.hosts, &door.hosts))
                });
                if taken {
                    return Err(format!(
                        "{} already serves another app of this account for the same names; give each app its own `[ferry.proxy] hosts`",
                        door.listen
                    ));
                }
            }
        }
        let mut opened = Vec::new();
        for door in doors.iter().filter(|d| !listeners.contains_key(&d.listen)) {
            match self.inner.sockets.listen(door.listen) {
                Ok(socket) => opened.push((door.clone(), socket)),
                Err(e) => {
                    // Nothing changes: what this call opened is closed again.
                    for (door, _) in opened {
                        self.inner.sockets.close(door.listen);
                    }
                    return Err(e);
                }
            }
        }
        let site = self.site(app);
        for (door, socket) in opened {
            let claims = Arc::new(RwLock::new(Arc::new(Vec::new())));
            let acceptor = tls::Acceptor::default();
            // Configured before it accepts: connections queued in the keeper's socket
            // are accepted at once.
            if let Some(config) = configs.remove(&door.listen) {
                acceptor.set(config);
            }
            let shape = Shape {
                kind: door.kind,
                acceptor: door.tls.as_ref().map(|_| acceptor.clone()),
                redirect_https: door.redirect_https,
            };
            let task = tokio::spawn(serve(
                shape,
                socket,
                Arc::clone(&claims),
                door.listen,
                self.inner.paths.clone(),
                self.inner.graceful.clone(),
            ));
            listeners.insert(
                door.listen,
                Listener {
                    kind: door.kind,
                    tls: door.tls.clone(),
                    redirect_https: door.redirect_https,
                    acceptor,
                    claims,
                    task,
                },
            );
        }
        for (addr, config) in configs {
            if let Some(listener) = listeners.get(&addr) {
                listener.acceptor.set(config);
            }
        }
        // Claims: this app's, as asked, on every listener.
        let mut empty = Vec::new();
        for (addr, listener) in listeners.iter() {
            let mut claims = listener.claims.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut next: Vec<Claim> = claims.iter().filter(|c| c.site.app.dir != app.dir).cloned().collect();
            if let Some(door) = doors.iter().find(|d| d.listen == *addr) {
                next.push(Claim {
                    site: Arc::clone(&site),
                    hosts: door.hosts.clone(),
                    region: door.region.clone(),
                    target: door.target,
                    groups: Arc::new(door.groups.clone()),
                });
                // Named claims first; the app without names takes the rest.
                next.sort_by_key(|c| c.hosts.is_empty());
            }
            if next.is_empty() {
                empty.push(*addr);
            }
            *claims = Arc::new(next);
        }
        for addr in empty {
            self.close_listener(&mut listeners, addr);
        }
        drop(listeners);
        if record {
            write_doors(app, doors).map_err(|e| format!("recording the front door: {e}"))?;
        }
        site.restore();
        Ok(())
    }

    /// Stops serving `addr` and lets its socket go.
    fn close_listener(&self, listeners: &mut HashMap<SocketAddr, Listener>, addr: SocketAddr) {
        if let Some(listener) = listeners.remove(&addr) {
            listener.task.abort();
            self.inner.sockets.close(addr);
        }
    }

    /// Keeps the sockets held by a keeper (see `Sockets::tend`).
    pub fn tend(&self) {
        self.inner.sockets.tend();
    }

    /// Lets the keeper close what no door of this agent uses.
    pub fn prune(&self) {
        self.inner.sockets.prune();
    }

    /// The agent leaves: it accepts no more connections (they wait in the sockets'
    /// queues, which the keeper keeps open for the next agent, unless `release`).
    pub fn stop_accepting(&self, release: bool) {
        for (_, listener) in lock(&self.inner.listeners).drain() {
            listener.task.abort();
        }
        self.inner.sockets.leave(release);
    }

    /// Asks every HTTP connection of a leaving agent to close once its request in
    /// flight is answered (HTTP/2 gets GOAWAY), and waits, up to [`DRAIN_LIMIT`], for
    /// them to end, tunnels and TCP relays too.
    pub async fn finish(&self) {
        // A connection accepted just before has not sent its request yet: closing it
        // now would drop that request unanswered (clients retry a reused connection,
        // not a new one). It gets a moment to send it.
        tokio::time::sleep(FIRST_REQUEST_GRACE).await;
        self.inner.graceful.begin();
        let until = Instant::now() + DRAIN_LIMIT;
        let _ = tokio::time::timeout_at(until, self.inner.graceful.end()).await;
        let busy = || {
            lock(&self.inner.sites)
                .values()
                .any(|site| lock(&site.known).values().any(|b| b.inflight.load(Ordering::SeqCst) > 0))
        };
        while busy() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Closes the app's doors and forgets its table (the app is destroyed).
    pub fn close(&self, app: &App) {
        let _ = self.open(app, &[]);
        lock(&self.inner.sites).remove(&app.dir);
    }

    /// Where the app's doors listen.
    pub fn addresses(&self, app: &App) -> Vec<String> {
        let listeners = lock(&self.inner.listeners);
        let mut addrs: Vec<String> = listeners
            .iter()
            .filter(|(_, l)| l.claims().iter().any(|c| c.site.app.dir == app.dir))
            .map(|(addr, _)| addr.to_string())
            .collect();
        addrs.sort();
        addrs
    }

    /// The instances in the app's routing table; `None` when it keeps none.
    pub fn routing(&self, app: &App) -> Option<BTreeSet<String>> {
        match self.existing(app) {
            Some(site) => Some(site.current().iter().map(|b| b.id.clone()).collect()),
            None => read_table(app).map(|t| t.routed),
        }
    }

    /// The switch: `add` take traffic, `retire` stop taking it, in one step. Returns
    /// the retired backends, to drain.
    pub fn switch(&self, app: &App, add: &[String], retire: &[String]) -> Result<Vec<Arc<Backend>>, String> {
        let site = self.existing(app).unwrap_or_else(|| {
            // An app without doors still keeps its table, starting from the last one.
            let site = self.site(app);
            site.restore();
            site
        });
        site.switch(add, retire)
    }

    /// `ids` take `weight` percent of the clients (none: no canary) for `expires`,
    /// counted anew.
    pub fn canary(&self, app: &App, ids: &[String], weight: u8, expires: Duration) -> Result<(), String> {
        let site = self.site(app);
        let mut backends = Vec::new();
        for id in ids {
            let backend = site.backend(id).ok_or_else(|| format!("the agent knows no instance {id}"))?;
            backend.answered.store(0, Ordering::SeqCst);
            backend.errors.store(0, Ordering::SeqCst);
            backends.push(backend);
        }
        let canary = (!backends.is_empty() && weight > 0).then(|| Canary {
            set: Arc::new(backends),
            weight: weight.min(100),
            until: Instant::now() + expires.min(Duration::from_hours(24 * 365)),
        });
        *site.canary.write().unwrap_or_else(std::sync::PoisonError::into_inner) = canary;
        Ok(())
    }

    /// Requests answered by `ids` through the front door, errors among them, and the
    /// pid of each while it runs past its checks (0 when it does not).
    pub fn traffic(&self, app: &App, ids: &[String]) -> Vec<(String, u64, u64, u32)> {
        let Some(site) = self.existing(app) else { return Vec::new() };
        ids.iter()
            .filter_map(|id| {
                let backend = lock(&site.known).get(id).cloned()?;
                // A check that fails now and then is for the error count to judge; an
                // exit is not.
                let pid = {
                    let status = backend.status.borrow();
                    if matches!(status.phase, Phase::Healthy { .. }) {
                        status.pid
                    } else {
                        0
                    }
                };
                Some((id.clone(), backend.answered.load(Ordering::SeqCst), backend.errors.load(Ordering::SeqCst), pid))
            })
            .collect()
    }

    /// Puts the app in maintenance (`Some(message)`) or back in service, and keeps it
    /// on disk for the next agent.
    pub fn maintenance(&self, app: &App, message: Option<String>) -> std::io::Result<()> {
        let path = maintenance_path(app);
        match &message {
            Some(message) => {
                let json =
                    serde_json::to_vec(&Maintenance { message: message.clone() }).map_err(std::io::Error::other)?;
                super::files::write_atomic(&path, &json, 0o600)?;
            }
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            },
        }
        let site = self.site(app);
        *site.maintenance.write().unwrap_or_else(std::sync::PoisonError::into_inner) = message.map(Arc::from);
        Ok(())
    }

    /// The maintenance message, while the app is in maintenance.
    pub fn in_maintenance(&self, app: &App) -> Option<String> {
        match self.existing(app) {
            Some(site) => site.maintenance_message().map(|m| m.to_string()),
            None => read_maintenance(app),
        }
    }

    /// `ids` answer requests with the preview header until they take traffic or go.
    pub fn preview(&self, app: &App, ids: &[String]) -> Result<(), String> {
        let site = self.site(app);
        let mut added = Vec::new();
        for id in ids {
            added.push(site.backend(id).ok_or_else(|| format!("the agent knows no instance {id}"))?);
        }
        let mut preview = site.preview.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next: Vec<Arc<Backend>> = preview.iter().filter(|b| !ids.contains(&b.id)).cloned().collect();
        next.extend(added);
        *preview = Arc::new(next);
        Ok(())
    }

    /// Drains `id` before its process is stopped in place, leaving it in the table.
    pub async fn quiesce(&self, app: &App, id: &str, grace: Duration) {
        let backend = self.existing(app).and_then(|site| site.current().iter().find(|b| b.id == id).cloned());
        if let Some(backend) = backend {
            backend.draining.store(true, Ordering::SeqCst);
            backend.drain(grace).await;
        }
    }

    /// `id` runs again: it takes traffic once it passes its checks.
    pub fn resume(&self, app: &App, id: &str) {
        if let Some(site) = self.existing(app) {
            for backend in site.current().iter().filter(|b| b.id == id) {
                backend.draining.store(false, Ordering::SeqCst);
                backend.cut.send_replace(false);
            }
        }
    }

    /// Takes `id` out of the table (if it is there) and drains it.
    pub async fn retire(&self, app: &App, id: &str, grace: Duration) {
        // One outside the table (a canary, a preview) may have requests in flight too.
        let outside = self.existing(app).and_then(|site| lock(&site.known).get(id).cloned());
        if let Ok(retired) = self.switch(app, &[], &[id.to_string()]) {
            let drained = !retired.is_empty();
            for backend in retired {
                backend.drain(grace).await;
            }
            if let (false, Some(backend)) = (drained, outside) {
                backend.drain(grace).await;
            }
        }
    }
}

impl Site {
    fn maintenance_message(&self) -> Option<Arc<str>> {
        self.maintenance.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn current(&self) -> Arc<Vec<Arc<Backend>>> {
        Arc::clone(&self.table.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn backend(&self, id: &str) -> Option<Arc<Backend>> {
        let mut known = lock(&self.known);
        if let Some(backend) = known.get(id) {
            return Some(Arc::clone(backend));
        }
        let status = self.supervisor.watch(&self.app, id)?;
        let backend = Arc::new(Backend {
            id: id.to_string(),
            status,
            inflight: AtomicUsize::new(0),
            answered: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            refused_at: AtomicU64::new(0),
            cut: watch::channel(false).0,
            draining: std::sync::atomic::AtomicBool::new(false),
        });
        known.insert(id.to_string(), Arc::clone(&backend));
        Some(backend)
    }

    /// The table as the last agent left it (every instance, for an app that never had
    /// one), keeping only instances the supervisor knows.
    fn restore(&self) {
        if !self.current().is_empty() {
            return;
        }
        let routed = match read_table(&self.app) {
            Some(table) => table.routed,
            None => self.app.records().0.into_iter().map(|r| r.id).collect(),
        };
        let backends: Vec<Arc<Backend>> = routed.iter().filter_map(|id| self.backend(id)).collect();
        *self.table.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(backends);
        let _ = self.save();
    }

    fn switch(&self, add: &[String], retire: &[String]) -> Result<Vec<Arc<Backend>>, String> {
        let mut added = Vec::new();
        for id in add {
            added.push(self.backend(id).ok_or_else(|| format!("the agent knows no instance {id}"))?);
        }
        let retired;
        {
            let mut table = self.table.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            let (out, mut kept): (Vec<Arc<Backend>>, Vec<Arc<Backend>>) =
                table.iter().cloned().partition(|b| retire.contains(&b.id));
            for backend in added {
                if !kept.iter().any(|b| b.id == backend.id) {
                    kept.push(backend);
                }
            }
            let before = std::mem::replace(&mut *table, Arc::new(kept));
            if let Err(e) = save(&self.app, &table) {
                // Unrecorded, the switch is not made: the next agent would undo it.
                *table = before;
                return Err(format!("recording the routing table (a full disk?): {e}"));
            }
            retired = out;
        }
        {
            let mut canary = self.canary.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            if canary.as_ref().is_some_and(|c| c.set.iter().any(|b| add.contains(&b.id) || retire.contains(&b.id))) {
                *canary = None;
            }
        }
        {
            let mut preview = self.preview.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            if preview.iter().any(|b| add.contains(&b.id) || retire.contains(&b.id)) {
                let kept =
                    preview.iter().filter(|b| !add.contains(&b.id) && !retire.contains(&b.id)).cloned().collect();
                *preview = Arc::new(kept);
            }
        }
        for backend in &retired {
            lock(&self.known).remove(&backend.id);
        }
        for id in retire {
            lock(&self.known).remove(id);
        }
        Ok(retired)
    }

    fn save(&self) -> std::io::Result<()> {
        save(&self.app, &self.current())
    }

    /// The instance a new request goes to: of those that pass their checks and have
    /// refused no connection since, the one with the fewest requests in flight (ties
    /// in turn). `None` when there is none now.
    fn pick(&self, skip: &[String], pool: Pool, groups: &[String]) -> Option<Arc<Backend>> {
        let chosen = match pool {
            Pool::Table => None,
            Pool::Preview => Some(Arc::clone(&self.preview.read().unwrap_or_else(std::sync::PoisonError::into_inner))),
            Pool::Canary => self
                .canary
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_ref()
                .filter(|c| Instant::now() < c.until)
                .map(|c| Arc::clone(&c.set)),
        };
        // With nothing to preview (or no canary ready), the table answers.
        let takes = |b: &Backend| !skip.contains(&b.id) && b.in_groups(groups) && b.usable();
        if let Some(set) = chosen.filter(|set| set.iter().any(|b| takes(b))) {
            return Self::least_busy(&set, takes, self.turn.fetch_add(1, Ordering::Relaxed));
        }
        Self::least_busy(&self.current(), takes, self.turn.fetch_add(1, Ordering::Relaxed))
    }

    /// The canary's share of clients and how long it has left, when there is one.
    fn canary_weight(&self) -> Option<(u8, Duration)> {
        let canary = self.canary.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        canary.as_ref().filter(|c| now < c.until).map(|c| (c.weight, c.until - now))
    }

    fn least_busy(table: &[Arc<Backend>], takes: impl Fn(&Backend) -> bool, start: usize) -> Option<Arc<Backend>> {
        let n = table.len();
        (0..n)
            .map(|i| &table[(start + i) % n.max(1)])
            .filter(|b| takes(b))
            .min_by_key(|b| b.inflight.load(Ordering::Relaxed))
            .cloned()
    }

    /// [`Self::pick`], waiting up to [`HOLD`] for one to become usable.
    async fn pick_held(&self, skip: &[String], pool: Pool, groups: &[String]) -> Option<Arc<Backend>> {
        let until = Instant::now() + HOLD;
        loop {
            if let Some(backend) = self.pick(skip, pool, groups) {
                return Some(backend);
            }
            if Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(HOLD_POLL).await;
        }
    }
}

impl Backend {
    /// Of a process group the doors route to (`groups` empty: any).
    fn in_groups(&self, groups: &[String]) -> bool {
        groups.is_empty() || self.status.borrow().record.as_ref().is_some_and(|r| groups.contains(&r.group))
    }

    /// Running, passing its checks, and not refusing connections.
    fn usable(&self) -> bool {
        let status = self.status.borrow();
        let healthy = matches!(status.phase, Phase::Healthy { .. });
        let health = status.runtime.health.as_ref();
        let passing = health.is_none_or(|h| h.passing);
        let refused = self.refused_at.load(Ordering::Relaxed);
        let draining = self.draining.load(Ordering::Relaxed);
        healthy && passing && !draining && (refused == 0 || health.is_some_and(|h| h.at > refused))
    }

    /// Where it takes connections: its `$PORT`, or its port for service `target`.
    fn addr(&self, target: Option<u16>) -> Option<SocketAddr> {
        let status = self.status.borrow();
        let record = status.record.as_ref()?;
        let port = match target {
            None => record.port,
            Some(internal) => *record.ports.get(&internal)?,
        };
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// Counts an answer it gave (or failed to give).
    fn answered(&self, error: bool) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn refused(&self) {
        self.refused_at.store(crate::host::now_ms(), Ordering::Relaxed);
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(self))
    }

    /// Waits for what is in flight to end: upgraded connections are cut after `grace`,
    /// plain requests are waited for up to [`DRAIN_LIMIT`] (or `grace`, if longer).
    pub async fn drain(&self, grace: Duration) {
        let started = Instant::now();
        let limit = grace.max(DRAIN_LIMIT);
        let mut pause = Duration::from_millis(1);
        while self.inflight.load(Ordering::SeqCst) > 0 {
            let waited = started.elapsed();
            if waited >= grace {
                self.cut.send_replace(true);
            }
            if waited >= limit {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }
}

/// A request or connection in flight to a backend, counted until dropped.
pub struct InFlight(Arc<Backend>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether two apps' names could both match a request.
fn overlaps(a: &[String], b: &[String]) -> bool {
    (a.is_empty() && b.is_empty()) || a.iter().any(|x| b.contains(x))
}

/// Whether `host` (lowercase, without port) is one of `names` (`*.example.com`
/// matches any subdomain).
fn matches(names: &[String], host: &str) -> bool {
    names.iter().any(|name| match name.strip_prefix("*.") {
        Some(domain) => {
            host.len() > domain.len() + 1 && host.ends_with(domain) && host[..host.len() - domain.len()].ends_with('.')
        }
        None => name == host,
    })
}

/// The claim a request for `host` goes to: the app naming it, else the app without
/// names.
fn claim_for<'c>(claims: &'c [Claim], host: Option<&str>) -> Option<&'c Claim> {
    let host =
        host.map(|h| h.rsplit_once(':').filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit())).map_or(h, |(h, _)| h));
    let host = host.map(str::to_ascii_lowercase);
    if let Some(host) = &host {
        if let Some(claim) = claims.iter().find(|c| matches(&c.hosts, host)) {
            return Some(claim);
        }
    }
    claims.iter().find(|c| c.hosts.is_empty())
}

/// What a listener serves: HTTP or TCP, over TLS or not, or only redirects to HTTPS.
#[derive(Clone)]
pub struct Shape {
    kind: DoorKind,
    acceptor: Option<tls::Acceptor>,
    redirect_https: Option<u16>,
}

/// Accepts on one listener for as long as the agent serves it.
async fn serve(
    shape: Shape,
    socket: std::net::TcpListener,
    claims: Arc<RwLock<Arc<Vec<Claim>>>>,
    addr: SocketAddr,
    paths: Paths,
    graceful: http::Graceful,
) {
    let listener = match socket.set_nonblocking(true).and_then(|()| tokio::net::TcpListener::from_std(socket)) {
        Ok(listener) => listener,
        Err(e) => {
            super::daemon::log(&paths, &format!("front door {addr}: {e}"));
            return;
        }
    };
    let server = http::Server::new(graceful);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            // Out of file descriptors, say: not a reason to spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let claims = Arc::clone(&claims.read().unwrap_or_else(std::sync::PoisonError::into_inner));
        match shape.kind {
            DoorKind::Http => server.connection(stream, peer, addr, claims, &shape),
            DoorKind::Tcp => {
                tokio::spawn(relay(stream, claims));
            }
        }
    }
}

/// A TCP door's connection, relayed to one instance (another one when it refuses).
async fn relay(mut stream: tokio::net::TcpStream, claims: Arc<Vec<Claim>>) {
    let Some(claim) = claims.first() else { return };
    let mut tried = Vec::new();
    while let Some(backend) = claim.site.pick_held(&tried, Pool::Table, &claim.groups).await {
        let Some(addr) = backend.addr(claim.target) else {
            tried.push(backend.id.clone());
            continue;
        };
        let _flight = backend.begin();
        if let Ok(mut upstream) = tokio::net::TcpStream::connect(addr).await {
            let _ = upstream.set_nodelay(true);
            let mut cut = backend.cut.subscribe();
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream) => {}
                _ = cut.wait_for(|c| *c) => {}
            }
            return;
        }
        backend.refused();
        tried.push(backend.id.clone());
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn save(app: &App, backends: &[Arc<Backend>]) -> std::io::Result<()> {
    let table = Table { routed: backends.iter().map(|b| b.id.clone()).collect() };
    let json = serde_json::to_vec(&table).map_err(std::io::Error::other)?;
    super::files::write_atomic(&app.dir.join("routes.json"), &json, 0o600)
}

fn read_table(app: &App) -> Option<Table> {
    serde_json::from_str(&std::fs::read_to_string(app.dir.join("routes.json")).ok()?).ok()
}

fn doors_path(app: &App) -> PathBuf {
    app.dir.join("doors.json")
}

fn read_doors(app: &App) -> Option<Vec<Door>> {
    serde_json::from_str(&std::fs::read_to_string(doors_path(app)).ok()?).ok()
}

fn write_doors(app: &App, doors: &[Door]) -> std::io::Result<()> {
    if doors.is_empty() && !doors_path(app).exists() {
        return Ok(());
    }
    let json = serde_json::to_vec(doors).map_err(std::io::Error::other)?;
    super::files::write_atomic(&doors_path(app), &json, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_exactly_or_by_wildcard() {
        let names = vec!["example.com".to_string(), "*.example.org".to_string()];
        assert!(matches(&names, "example.com"));
        assert!(!matches(&names, "www.example.com"));
        assert!(matches(&names, "a.example.org"));
        assert!(!matches(&names, "example.org"));
        assert!(!matches(&names, "aexample.org"));
    }

    #[test]
    fn apps_without_names_share_nothing_with_named_ones() {
        assert!(overlaps(&[], &[]));
        assert!(!overlaps(&["a".into()], &[]));
        assert!(overlaps(&["a".into()], &["a".into(), "b".into()]));
    }
}
