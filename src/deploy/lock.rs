//! Taking the deploy lock on every host of an operation, in a fixed order, and
//! reading each host's state under it in the same round trip. A stale lease (its
//! holder gone, or not refreshed for 30 s) is taken over with a warning, so a killed
//! operation never needs a manual unlock; `wait` retries while another holds it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::Error;
use crate::fleet::Fleet;
use crate::host::lock::{Attempt, Guard, Holder};
use crate::host::{on_each, Host, HostError, HostState};
use crate::report::{Event, Reporter};

/// How often a waiting operation tries the lock again.
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// Takes the lock on every host (in a fixed order), taking over stale leases with a
/// warning. With `wait`, retries until it is free or the wait is over. Each host's
/// state is read under its lock in the same round trip ([`Guard::observed`]).
pub async fn take(
    fleet: &Fleet,
    reporter: &dyn Reporter,
    command: &str,
    wait: Option<Duration>,
) -> Result<Guard, Error> {
    let holder = Holder::me(command);
    let mut hosts: Vec<Host> = fleet.hosts().cloned().collect();
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    let Some((first, rest)) = hosts.split_first() else {
        return Ok(Guard::new(Vec::new(), holder.token, BTreeMap::new()));
    };
    let deadline = wait.map(|w| tokio::time::Instant::now() + w);
    connect_all(&hosts).await?;
    let mut told = false;
    loop {
        // The first host in name order settles which of two operations started at
        // once goes ahead (the other never holds half the fleet); the rest are then
        // taken all at once.
        let mut results = vec![(first.name.clone(), take_one(first.clone(), holder.clone()).await)];
        if matches!(results[0].1, Ok(Took::Yes(_) | Took::TakenOver { .. })) {
            results.extend(on_each(rest.to_vec(), |host| take_one(host, holder.clone())).await);
        }
        let mut taken = BTreeMap::new();
        let (mut conflict, mut failure) = (None, None);
        for (name, result) in results {
            match result {
                Ok(Took::Yes(state)) => {
                    taken.insert(name, *state);
                }
                Ok(Took::TakenOver { previous_holder, reason, state }) => {
                    reporter.event(&Event::LockTakenOver { host: name.clone(), previous_holder, reason });
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
        match (deadline, wait) {
            (Some(deadline), Some(wait)) if tokio::time::Instant::now() < deadline => {
                if !told {
                    told = true;
                    reporter.event(&Event::Warning {
                        message: format!(
                            "waiting up to {} for the lock on `{host}`, held by {holder_text}",
                            humantime::format_duration(wait)
                        ),
                    });
                }
                tokio::time::sleep(RETRY_EVERY).await;
            }
            _ => return Err(Error::Locked { host, holder: holder_text, waited: wait }),
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
async fn take_one(host: Host, holder: Holder) -> Result<Took, HostError> {
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
    let connected = on_each(hosts.to_vec(), |host| async move { host.transport.connect().await }).await;
    match connected.into_iter().find(|(_, r)| r.is_err()) {
        Some((name, Err(source))) => Err(crate::error::before_change(&name, "connecting", source.into())),
        _ => Ok(()),
    }
}

/// Gives back the locks already taken when the whole set cannot be had.
async fn release_all(hosts: &[Host], token: &str) {
    let token = token.to_string();
    on_each(hosts.to_vec(), |host| {
        let token = token.clone();
        async move { host.lock_release(Some(&token)).await }
    })
    .await;
}
