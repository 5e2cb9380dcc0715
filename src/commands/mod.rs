//! One module per command. Each `run` reads as a checklist: load, observe, plan,
//! (print the plan on `--dry-run`), execute, report the outcome. Shared steps —
//! observing the fleet, taking the lock, shipping a release — live here.

pub mod backups;
pub mod build;
pub mod config;
pub mod deploy;
pub mod destroy;
pub mod inspect;
pub mod launch;
pub mod lock;
pub mod pg;
pub mod regions;
pub mod secrets;
pub mod ship;
pub mod volumes;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::config::Config;
use crate::error::Error;
use crate::fleet::Fleet;
use crate::health::Checks;
use crate::history;
use crate::host::lock::{Attempt, Guard, Holder};
use crate::host::{Host, HostState};
use crate::report::{Event, Reporter};

/// What every command gets: the loaded config and where to report.
pub struct Ctx {
    pub config: Arc<Config>,
    pub config_path: PathBuf,
    pub reporter: Arc<dyn Reporter>,
    pub json: bool,
    pub ssh: crate::transport::SshOptions,
    /// Whether the user can be asked to confirm (stdin is a terminal).
    pub interactive: bool,
}

impl Ctx {
    #[allow(clippy::needless_pass_by_value)] // events are built inline at each call
    pub fn event(&self, event: Event) {
        self.reporter.event(&event);
    }

    pub fn warn(&self, message: impl Into<String>) {
        self.event(Event::Warning { message: message.into() });
    }
}

/// Reads every host's state in parallel. One unreachable host stops the command
/// before anything changed.
pub async fn observe(fleet: &Fleet) -> Result<BTreeMap<String, HostState>, Error> {
    let mut tasks = JoinSet::new();
    for host in fleet.hosts().cloned() {
        tasks.spawn(async move { (host.name.clone(), host.observe().await) });
    }
    let mut observed = BTreeMap::new();
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let Ok((name, result)) = joined else { continue };
        match result {
            Ok(state) => {
                observed.insert(name, state);
            }
            Err(source) => {
                first_error.get_or_insert(crate::error::before_change(&name, "reading its state", source));
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(observed),
    }
}

/// Ids of instances running `version` that pass their checks right now.
pub async fn healthy_on(
    fleet: &Fleet,
    observed: &BTreeMap<String, HostState>,
    checks: &Checks,
    version: &str,
) -> BTreeSet<String> {
    // All at once: through an SSH forward a TCP check takes 100 ms.
    let mut probes = JoinSet::new();
    for host in fleet.hosts() {
        let Some(state) = observed.get(&host.name) else { continue };
        for instance in state.instances.iter().filter(|i| i.alive && i.record.version == version) {
            let (host, checks, id, port) =
                (host.clone(), checks.clone(), instance.record.id.clone(), instance.record.port);
            probes.spawn(async move {
                let addr = host.transport.forward(port).await.ok()?;
                checks.check(addr, !host.transport.is_local()).await.ok().map(|()| id)
            });
        }
    }
    let mut healthy = BTreeSet::new();
    while let Some(result) = probes.join_next().await {
        healthy.extend(result.ok().flatten());
    }
    healthy
}

/// Takes the lock on every host (in a fixed order), taking over stale leases with a
/// warning. With `wait`, retries until it is free or the wait is over. Each host's
/// state is read under its lock in the same round trip ([`Guard::observed`]).
pub async fn lock(ctx: &Ctx, fleet: &Fleet, command: &str, wait: Option<Duration>) -> Result<Guard, Error> {
    let holder = Holder::me(command);
    let mut hosts: Vec<Host> = fleet.hosts().cloned().collect();
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    let Some((first, rest)) = hosts.split_first() else {
        return Ok(Guard::new(Vec::new(), holder.token, BTreeMap::new()));
    };
    let deadline = wait.map(|w| tokio::time::Instant::now() + w);
    connect_all(&hosts).await?;
    loop {
        // The first host in name order settles which of two operations started at
        // once goes ahead (the other never holds half the fleet); the rest are then
        // taken all at once.
        let mut results = vec![(first.name.clone(), take_one(first.clone(), holder.clone()).await)];
        if matches!(results[0].1, Ok(Took::Yes(_) | Took::TakenOver { .. })) {
            let rest = crate::host::on_each(rest.to_vec(), |host| take_one(host, holder.clone())).await;
            results.extend(rest);
        }
        let mut taken = BTreeMap::new();
        let (mut conflict, mut failure) = (None, None);
        for (name, result) in results {
            match result {
                Ok(Took::Yes(state)) => {
                    taken.insert(name, *state);
                }
                Ok(Took::TakenOver { previous_holder, reason, state }) => {
                    ctx.event(Event::LockTakenOver { host: name.clone(), previous_holder, reason });
                    taken.insert(name, *state);
                }
                Ok(Took::Conflict(holder_text)) => {
                    conflict.get_or_insert((name, holder_text));
                }
                Err(source) => {
                    failure.get_or_insert((name, source));
                }
            }
        }
        let held: Vec<Host> = hosts.iter().filter(|h| taken.contains_key(&h.name)).cloned().collect();
        if let Some((name, source)) = failure {
            release_all(&held, &holder.token).await;
            return Err(crate::error::before_change(&name, "taking the lock", source));
        }
        let Some((host, holder_text)) = conflict else {
            return Ok(Guard::new(held, holder.token, taken));
        };
        release_all(&held, &holder.token).await;
        match deadline {
            Some(deadline) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            _ => return Err(Error::Locked { host, holder: holder_text }),
        }
    }
}

/// What trying one host's lock came to; when taken, the host's state read under it.
enum Took {
    Yes(Box<HostState>),
    TakenOver {
        previous_holder: String,
        reason: String,
        state: Box<HostState>,
    },
    /// Held by someone else: who.
    Conflict(String),
}

/// Takes one host's lock, taking over a stale one.
async fn take_one(host: Host, holder: Holder) -> Result<Took, crate::host::HostError> {
    let held = match host.lock_acquire(&holder).await? {
        Attempt::Acquired(state) => return Ok(Took::Yes(state)),
        Attempt::Held(held) => held,
    };
    let Some(reason) = held.stale_reason() else { return Ok(Took::Conflict(held.describe())) };
    match host.lock_takeover(&held, &holder).await? {
        Some(state) => Ok(Took::TakenOver { previous_holder: held.describe(), reason, state: Box::new(state) }),
        None => Ok(Took::Conflict(held.describe())),
    }
}

/// Opens the connection to every host at once (established ones are reused).
pub async fn connect_all(hosts: &[Host]) -> Result<(), Error> {
    let connected = crate::host::on_each(hosts.to_vec(), |host| async move { host.transport.connect().await }).await;
    match connected.into_iter().find(|(_, r)| r.is_err()) {
        Some((name, Err(source))) => Err(crate::error::before_change(&name, "connecting", source.into())),
        _ => Ok(()),
    }
}

/// Gives back the locks already taken when the whole set cannot be had.
async fn release_all(hosts: &[Host], token: &str) {
    let token = token.to_string();
    crate::host::on_each(hosts.to_vec(), |host| {
        let token = token.clone();
        async move { host.lock_release(Some(&token)).await }
    })
    .await;
}

/// The history as the primary region's first reachable host has it.
pub async fn read_history(fleet: &Fleet) -> Vec<history::Entry> {
    for host in fleet.hosts() {
        if let Ok(text) = host.read_history().await {
            if !text.trim().is_empty() {
                return history::entries(&text);
            }
        }
    }
    Vec::new()
}

/// Appends one history line on every host; a host that cannot be written is warned
/// about, since the operation itself already happened.
pub async fn record_history(ctx: &Ctx, fleet: &Fleet, record: &history::Record) {
    let line = record.to_line();
    let appended = crate::host::on_each(fleet.hosts().cloned(), |host| {
        let line = line.clone();
        async move { host.append_history(&line).await }
    })
    .await;
    for (name, result) in appended {
        if let Err(e) = result {
            ctx.warn(format!("could not record history on `{name}`: {e}"));
        }
    }
}

pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A new instance id: 14 hex digits, like Fly machine ids.
pub fn new_instance_id() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 7];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        bytes.copy_from_slice(&nanos.to_le_bytes()[..7]);
    }
    bytes.iter().fold(String::with_capacity(14), |mut id, b| {
        use std::fmt::Write as _;
        let _ = write!(id, "{b:02x}");
        id
    })
}

/// Asks the user to confirm on the terminal; without one, refuses and names `--yes`.
pub fn confirm(ctx: &Ctx, question: &str) -> Result<(), Error> {
    if !ctx.interactive {
        return Err(Error::Usage {
            message: format!("{question} (confirmation needed, and stdin is not a terminal)"),
            hint: Some("run it again with `--yes`".into()),
        });
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Error::usage("cancelled; nothing was changed"))
    }
}
