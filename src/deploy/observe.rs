//! Reading the fleet: every host's state at once, which instances pass their checks,
//! the history, and what is current. One unreachable host stops the operation before
//! anything changed.

use std::collections::{BTreeMap, BTreeSet};

use tokio::task::JoinSet;

use crate::error::Error;
use crate::fleet::Fleet;
use crate::history;
use crate::host::HostState;
use crate::settings::Settings;

/// What every host holds, by host name.
pub type Observed = BTreeMap<String, HostState>;

/// Reads every host's state in parallel.
pub async fn observe(fleet: &Fleet) -> Result<Observed, Error> {
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
pub async fn healthy_on(fleet: &Fleet, observed: &Observed, settings: &Settings, version: &str) -> BTreeSet<String> {
    // All at once: each is a round trip to its host's agent.
    let mut probes = JoinSet::new();
    for host in fleet.hosts() {
        let Some(state) = observed.get(&host.name) else { continue };
        for instance in state.instances.iter().filter(|i| i.alive && i.record.version == version) {
            let checks = settings.group(&instance.record.group).checks.clone();
            let (host, id, port) = (host.clone(), instance.record.id.clone(), instance.record.port);
            let ports = instance.record.ports.clone();
            probes.spawn(
                async move { host.probe(port, &ports, &checks).await.ok().filter(|passing| *passing).map(|_| id) },
            );
        }
    }
    let mut healthy = BTreeSet::new();
    while let Some(result) = probes.join_next().await {
        healthy.extend(result.ok().flatten());
    }
    healthy
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

/// What the hosts say is current (the primary's `current` first).
pub fn current_on_hosts(fleet: &Fleet, observed: &Observed) -> Option<String> {
    fleet.hosts().find_map(|h| observed.get(&h.name).and_then(|s| s.current.clone()))
}

/// What the hosts say is current, else what the history last completed.
pub fn current_from(fleet: &Fleet, observed: &Observed, entries: &[history::Entry]) -> Option<String> {
    current_on_hosts(fleet, observed).or_else(|| history::current(entries).0)
}

/// What the hosts say is current, else the history (read only then).
pub async fn current_version(fleet: &Fleet, observed: &Observed) -> Option<String> {
    match current_on_hosts(fleet, observed) {
        Some(current) => Some(current),
        None => history::current(&read_history(fleet).await).0,
    }
}

/// Releases unpacked on every host of the fleet.
pub fn versions_everywhere(fleet: &Fleet, observed: &Observed) -> BTreeSet<String> {
    let mut sets = fleet.hosts().map(|h| {
        observed
            .get(&h.name)
            .map(|s| s.releases.iter().map(|r| r.version.clone()).collect::<BTreeSet<_>>())
            .unwrap_or_default()
    });
    let first = sets.next().unwrap_or_default();
    sets.fold(first, |acc, s| acc.intersection(&s).cloned().collect())
}
