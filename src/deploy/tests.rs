//! The engine's decisions, on fake hosts (`transport::fake`) with paused time: what a
//! rollout does when an instance fails in each region, when a host is lost or cannot
//! take the release, when the lock is taken over, and how each strategy and order
//! batches its instances.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::fleet::{Fleet, Region};
use crate::host::Host;
use crate::postgres::Lsn;
use crate::release::{Artifact, Manifest};
use crate::report::{Event, Outcome, PlanItem, Reporter};
use crate::settings::{Overrides, Settings};
use crate::transport::fake::FakeTransport;
use crate::transport::{SshOptions, Transport};

use super::plan::{Kind, Wave};
use super::{Engine, Operation, Release, Stops};

/// Every event, in order.
#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

impl Reporter for Recorder {
    fn event(&self, event: &Event) {
        self.0.lock().unwrap().push(event.clone());
    }
}

/// A fleet of fake hosts and the settings of an app on it.
struct World {
    dir: tempfile::TempDir,
    settings: Settings,
    fleet: Fleet,
    hosts: BTreeMap<String, FakeTransport>,
    recorder: Arc<Recorder>,
}

/// `regions`: (name, hosts, count), the first the primary. `toml`: more of fly.toml.
fn world(regions: &[(&str, usize, u32)], toml: &str) -> World {
    world_with(regions, toml, &Overrides::default())
}

fn world_with(regions: &[(&str, usize, u32)], toml: &str, overrides: &Overrides) -> World {
    let dir = tempfile::tempdir().unwrap();
    let primary = regions[0].0;
    // A test's own `[deploy]` replaces the default one.
    let deploy = if toml.contains("[deploy]") { "" } else { "[deploy]\n  wait_timeout = \"10s\"\n" };
    let text = format!(
        "app = \"hello\"\nprimary_region = \"{primary}\"\n\n{deploy}\n\
         [http_service]\n  internal_port = 8080\n  [[http_service.checks]]\n    path = \"/health\"\n\n{toml}\n"
    );
    let config = crate::config::parse(&dir.path().join("fly.toml"), &text).unwrap().config;
    let settings = Settings::resolve(&config, SshOptions::default(), overrides);
    let mut hosts = BTreeMap::new();
    let fleet = Fleet {
        regions: regions
            .iter()
            .map(|(name, n, count)| Region {
                name: (*name).to_string(),
                primary: *name == primary,
                count: *count,
                counts: vec![("app".to_string(), *count)],
                hosts: (1..=*n)
                    .map(|i| {
                        let host = format!("{name}{i}");
                        let fake = FakeTransport::new(&host);
                        hosts.insert(host.clone(), fake.clone());
                        Host {
                            name: host.clone(),
                            region: (*name).to_string(),
                            transport: Transport::Fake(fake),
                            app_dir: format!("/srv/{host}/hello"),
                        }
                    })
                    .collect(),
            })
            .collect(),
    };
    World { dir, settings, fleet, hosts, recorder: Arc::default() }
}

impl World {
    fn engine(&self) -> Engine<'_> {
        Engine::new(&self.settings, &self.fleet, Arc::clone(&self.recorder) as Arc<dyn Reporter>)
    }

    fn host(&self, name: &str) -> &FakeTransport {
        &self.hosts[name]
    }

    fn release(&self, version: &str) -> Release {
        let path = self.dir.path().join(format!("hello-{version}.tar.gz"));
        std::fs::write(&path, b"not really a tarball").unwrap();
        let manifest = Manifest { app: "hello".into(), version: version.into(), git_commit: None, files: Vec::new() };
        let artifact = Artifact { path, sha256: format!("sha-{version}"), size: 20, version: version.into(), manifest };
        Release { version: version.into(), artifact: Some(artifact), start: "bin/start".into() }
    }

    async fn deploy(&self, version: &str) -> Result<(), crate::error::Error> {
        self.engine().run(Operation::Deploy(self.release(version))).await
    }

    /// Forgets the events so far.
    fn events(&self) -> Vec<Event> {
        std::mem::take(&mut *self.recorder.0.lock().unwrap())
    }

    /// The version each live instance runs, by region, sorted.
    fn running(&self) -> BTreeMap<String, Vec<String>> {
        let mut running: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for fake in self.hosts.values() {
            for instance in fake.model().instances.values().filter(|i| i.alive) {
                running.entry(instance.record.region.clone()).or_default().push(instance.record.version.clone());
            }
        }
        for versions in running.values_mut() {
            versions.sort();
        }
        running
    }

    fn all_on(&self, version: &str) -> bool {
        self.running().values().flatten().all(|v| v == version)
    }

    fn count_running(&self) -> usize {
        self.running().values().map(Vec::len).sum()
    }
}

/// The regions in the order their instances were updated, one entry per update.
fn updates(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::InstanceUpdating { region, to, .. } => Some((region.clone(), to.clone())),
            _ => None,
        })
        .collect()
}

fn finished(events: &[Event]) -> Option<Outcome> {
    events.iter().rev().find_map(|e| match e {
        Event::Finished { outcome, .. } => Some(*outcome),
        _ => None,
    })
}

fn last_history_status(fake: &FakeTransport) -> String {
    let history = fake.model().history.clone();
    let last: serde_json::Value = serde_json::from_str(history.last().unwrap()).unwrap();
    last["status"].as_str().unwrap().to_string()
}

#[tokio::test(start_paused = true)]
async fn a_first_deploy_creates_every_instance_and_marks_the_release_current() {
    let w = world(&[("syd", 2, 2), ("lax", 1, 1)], "");
    w.deploy("v1").await.unwrap();
    assert_eq!(w.count_running(), 3);
    assert!(w.all_on("v1"));
    for fake in w.hosts.values() {
        let model = fake.model();
        assert_eq!(model.current.as_deref(), Some("v1"));
        assert!(model.lock.is_none(), "the lock is released");
    }
    assert_eq!(last_history_status(w.host("lax1")), "complete");
    assert_eq!(finished(&w.events()), Some(Outcome::Succeeded));
}

#[tokio::test(start_paused = true)]
async fn a_failed_instance_in_the_primary_halts_and_puts_it_back_before_other_regions_change() {
    let w = world(&[("syd", 1, 2), ("lax", 1, 2)], "");
    w.deploy("v1").await.unwrap();
    w.events();
    w.host("syd1").model().unhealthy.insert("v2".into());
    let error = w.deploy("v2").await.unwrap_err().to_string();
    assert!(error.contains("503"), "the reason names the failing check: {error}");
    assert!(error.contains("put back on v1"), "{error}");
    let events = w.events();
    assert!(updates(&events).iter().all(|(region, _)| region == "syd"), "lax never changed: {:?}", updates(&events));
    assert_eq!(finished(&events), Some(Outcome::Reverted));
    assert!(w.all_on("v1"));
    assert_eq!(w.count_running(), 4);
    assert_eq!(last_history_status(w.host("lax1")), "reverted");
}

#[tokio::test(start_paused = true)]
async fn a_failed_instance_in_another_region_reverts_the_primary_too() {
    let w = world(&[("syd", 1, 2), ("lax", 1, 2)], "");
    w.deploy("v1").await.unwrap();
    w.events();
    w.host("lax1").model().exits.insert("v2".into());
    let error = w.deploy("v2").await.unwrap_err().to_string();
    assert!(error.contains("exited before it became healthy"), "{error}");
    let events = w.events();
    let reverted_in_syd = events
        .iter()
        .filter(|e| matches!(e, Event::InstanceReverted { region, version, .. } if region == "syd" && version.as_deref() == Some("v1")))
        .count();
    assert_eq!(reverted_in_syd, 2, "both primary instances were updated, then put back");
    assert!(w.all_on("v1"));
    assert_eq!(w.count_running(), 4);
}

#[tokio::test(start_paused = true)]
async fn no_revert_leaves_the_updated_instances_on_the_new_version() {
    let overrides = Overrides { no_revert: true, ..Overrides::default() };
    let w = world_with(&[("syd", 1, 2), ("lax", 1, 1)], "", &overrides);
    w.deploy("v1").await.unwrap();
    w.host("lax1").model().unhealthy.insert("v2".into());
    let error = w.deploy("v2").await.unwrap_err().to_string();
    assert!(error.contains("--no-revert"), "{error}");
    assert_eq!(w.running()["syd"], ["v2", "v2"]);
    assert_eq!(w.running()["lax"], ["v1"], "the failing instance itself is always put back");
}

#[tokio::test(start_paused = true)]
async fn a_host_lost_mid_rollout_halts_and_reverts_what_changed() {
    let w = world(&[("syd", 2, 2)], "");
    w.deploy("v1").await.unwrap();
    // syd2 answers until its new instance is started, then never again.
    w.host("syd2").model().lose_at = Some("starting instance");
    let error = w.deploy("v2").await.unwrap_err().to_string();
    assert!(error.contains("syd2"), "names the lost host: {error}");
    let syd1: Vec<_> = w.host("syd1").model().instances.values().cloned().collect();
    assert!(
        syd1.len() == 1 && syd1[0].alive && syd1[0].record.version == "v1",
        "the instance on the other host is back on v1: {syd1:?}"
    );
    assert!(w.host("syd1").model().lock.is_none(), "the lock is released where the host answers");
}

#[tokio::test(start_paused = true)]
async fn a_lock_taken_over_stops_the_rollout_before_its_next_batch() {
    let w = world(&[("syd", 1, 4)], "");
    w.deploy("v1").await.unwrap();
    w.events();
    {
        let mut model = w.host("syd1").model();
        model.boot = Duration::from_secs(3);
        model.lose_lock = true;
    }
    let error = w.deploy("v2").await.unwrap_err();
    assert!(error.to_string().contains("lock was taken over"), "{error}");
    assert!(error.hint().unwrap().contains("ferry lock status"), "says what to look at: {error}");
    let events = w.events();
    // The lease is refreshed every 5 s: the refresh during the second instance finds
    // it lost, so the third never starts.
    assert_eq!(updates(&events).iter().filter(|(_, to)| to == "v2").count(), 2, "{:?}", updates(&events));
}

#[tokio::test(start_paused = true)]
async fn a_host_that_cannot_take_the_release_halts_and_puts_the_primary_back() {
    let w = world(&[("syd", 1, 1), ("lax", 1, 1)], "");
    w.deploy("v1").await.unwrap();
    w.host("lax1").model().refuse_release = Some("no space left on device".into());
    let error = w.deploy("v2").await.unwrap_err();
    assert!(error.to_string().contains("no space left on device"), "{error}");
    assert!(error.hint().unwrap().contains("df -h"), "says what to check: {error}");
    assert!(w.all_on("v1"));
    assert!(!w.host("lax1").model().releases.iter().any(|r| r.version == "v2"));
}

#[tokio::test(start_paused = true)]
async fn the_primary_region_ships_first_and_the_others_while_it_rolls() {
    let w = world(&[("syd", 2, 2), ("lax", 1, 1)], "");
    w.deploy("v1").await.unwrap();
    let plan = w.engine().preview(&Operation::Deploy(w.release("v2"))).await.unwrap().unwrap();
    let first_batch = &plan.instances.regions[0].batches[0][0].host;
    let waves: BTreeMap<&str, Wave> = plan.ship.iter().map(|s| (s.host.as_str(), s.wave)).collect();
    assert_eq!(waves[first_batch.as_str()], Wave::First);
    assert_eq!(waves["lax1"], Wave::Others);
    assert_eq!(waves.values().filter(|w| **w == Wave::Primary).count(), 1);
    w.deploy("v2").await.unwrap();
    assert!(w.all_on("v2"));
}

#[tokio::test(start_paused = true)]
async fn primary_last_updates_every_other_region_before_the_primary() {
    let w = world(&[("syd", 1, 2), ("lax", 1, 1), ("ams", 1, 1)], "[ferry]\n  primary_last = true\n");
    w.deploy("v1").await.unwrap();
    w.events();
    w.deploy("v2").await.unwrap();
    let order: Vec<String> = updates(&w.events()).into_iter().map(|(region, _)| region).collect();
    assert_eq!(order.len(), 4);
    assert_eq!(&order[2..], ["syd", "syd"], "the primary goes last: {order:?}");
}

#[tokio::test(start_paused = true)]
async fn canary_replaces_one_instance_then_the_rest_by_max_unavailable() {
    let w =
        world(&[("syd", 1, 3)], "[deploy]\n  strategy = \"canary\"\n  max_unavailable = 2\n  wait_timeout = \"10s\"\n");
    w.deploy("v1").await.unwrap();
    let plan = w.engine().preview(&Operation::Deploy(w.release("v2"))).await.unwrap().unwrap();
    let batches: Vec<usize> = plan.instances.regions[0].batches.iter().map(Vec::len).collect();
    assert_eq!(batches, [1, 2]);
    w.events();
    w.deploy("v2").await.unwrap();
    let events = w.events();
    let first_healthy = events.iter().position(|e| matches!(e, Event::InstanceHealthy { .. })).unwrap();
    let second_update = events.iter().filter(|e| matches!(e, Event::InstanceUpdating { .. })).nth(1).unwrap();
    let second_at = events.iter().position(|e| std::ptr::eq(e, second_update)).unwrap();
    assert!(first_healthy < second_at, "the canary is healthy before the rest start");
    assert!(w.all_on("v2"));
}

#[tokio::test(start_paused = true)]
async fn immediate_replaces_a_region_at_once() {
    let w = world(&[("syd", 1, 3)], "[deploy]\n  strategy = \"immediate\"\n  wait_timeout = \"10s\"\n");
    w.deploy("v1").await.unwrap();
    w.events();
    w.deploy("v2").await.unwrap();
    let events = w.events();
    let first_healthy = events.iter().position(|e| matches!(e, Event::InstanceHealthy { .. })).unwrap();
    let updating_before =
        events[..first_healthy].iter().filter(|e| matches!(e, Event::InstanceUpdating { .. })).count();
    assert_eq!(updating_before, 3);
    assert!(w.all_on("v2"));
}

#[tokio::test(start_paused = true)]
async fn deploying_what_already_runs_changes_nothing() {
    let w = world(&[("syd", 1, 2)], "");
    w.deploy("v1").await.unwrap();
    let before = w.host("syd1").model().calls.len();
    w.deploy("v1").await.unwrap();
    let calls = w.host("syd1").model().calls[before..].to_vec();
    assert!(!calls.iter().any(|c| c.starts_with("replacing") || c.starts_with("starting")), "{calls:?}");
    assert!(w.all_on("v1"));
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_plans_every_phase_and_changes_nothing() {
    let w = world(
        &[("syd", 1, 1), ("lax", 1, 1)],
        "[deploy]\n  release_command = \"bin/migrate\"\n  wait_timeout = \"10s\"\n",
    );
    w.deploy("v1").await.unwrap();
    let calls_before = w.host("syd1").model().calls.len();
    let plan = w.engine().preview(&Operation::Deploy(w.release("v2"))).await.unwrap().unwrap();
    assert!(plan.ship.iter().all(|s| s.wave == Wave::First && !s.present), "a migration waits for every host");
    assert_eq!(plan.migration.as_ref().map(|m| m.command.as_str()), Some("bin/migrate"));
    let phases: Vec<&str> = plan
        .items()
        .iter()
        .map(|item| match item {
            PlanItem::Doors { .. } => "doors",
            PlanItem::Ship { .. } => "ship",
            PlanItem::ReleaseCommand { .. } => "release_command",
            PlanItem::Instance { .. } => "instance",
            PlanItem::Finish { .. } => "finish",
            _ => "other",
        })
        .collect();
    assert_eq!(phases, ["doors", "doors", "ship", "ship", "release_command", "instance", "instance", "finish"]);
    let calls: Vec<String> = w.host("syd1").model().calls[calls_before..].to_vec();
    assert!(
        calls.iter().all(|c| c == "reading state" || c == "checking instance" || c == "reading history"),
        "{calls:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn pruning_is_planned_and_keeps_the_rollback_target() {
    let w = world(&[("syd", 1, 1)], "[ferry]\n  keep_releases = 2\n");
    for version in ["v1", "v2", "v3"] {
        w.deploy(version).await.unwrap();
    }
    let plan = w.engine().preview(&Operation::Deploy(w.release("v4"))).await.unwrap().unwrap();
    // v1 went when v3 came; v2 goes now, v3 stays as what a rollback goes back to.
    assert_eq!(plan.finish.prune.get("syd1").cloned().unwrap_or_default(), ["v2"]);
    w.deploy("v4").await.unwrap();
    let kept: Vec<String> = w.host("syd1").model().releases.iter().map(|r| r.version.clone()).collect();
    assert_eq!(kept, ["v3", "v4"]);
}

#[tokio::test(start_paused = true)]
async fn restart_replaces_every_instance_on_the_current_version() {
    let w = world(&[("syd", 1, 2)], "");
    w.deploy("v1").await.unwrap();
    let pids: Vec<u32> = w.host("syd1").model().instances.values().map(|i| i.record.pid).collect();
    w.engine().run(Operation::Restart { command: "secrets set A".into() }).await.unwrap();
    let after: Vec<u32> = w.host("syd1").model().instances.values().map(|i| i.record.pid).collect();
    assert!(pids.iter().all(|p| !after.contains(p)), "every instance got a new process: {pids:?} {after:?}");
    assert!(w.all_on("v1"));
    assert!(w.host("syd1").model().history.iter().any(|l| l.contains("\"restart\"")));
}

#[tokio::test(start_paused = true)]
async fn scaling_starts_what_is_missing_and_records_history() {
    let w = world(&[("syd", 1, 1), ("lax", 1, 2)], "");
    w.deploy("v1").await.unwrap();
    w.host("lax1").model().instances.clear();
    let op = Operation::Converge {
        kind: Kind::Scale,
        regions: vec!["lax".into()],
        stop: Stops::Ids(Vec::new()),
        done: None,
    };
    w.engine().run(op).await.unwrap();
    assert_eq!(w.running()["lax"], ["v1", "v1"]);
    let history = w.host("syd1").model().history.clone();
    let scale: Vec<&String> = history.iter().filter(|l| l.contains("\"scale\"")).collect();
    assert_eq!(scale.len(), 2, "started and complete: {history:?}");
}

#[tokio::test(start_paused = true)]
async fn scaling_down_stops_the_named_instances() {
    let w = world(&[("syd", 1, 3)], "");
    w.deploy("v1").await.unwrap();
    let doomed: Vec<String> = w.host("syd1").model().instances.keys().take(2).cloned().collect();
    let op = Operation::Converge {
        kind: Kind::Scale,
        regions: vec!["syd".into()],
        stop: Stops::Ids(doomed.clone()),
        done: None,
    };
    w.engine().run(op).await.unwrap();
    let left: Vec<String> = w.host("syd1").model().instances.keys().cloned().collect();
    assert_eq!(left.len(), 1);
    assert!(doomed.iter().all(|d| !left.contains(d)));
}

#[tokio::test(start_paused = true)]
async fn a_second_operation_is_refused_while_the_lock_is_held() {
    let w = world(&[("syd", 1, 1)], "");
    w.deploy("v1").await.unwrap();
    let mut holder = crate::host::lock::Holder::me("deploy");
    holder.machine = "elsewhere.example".into();
    w.host("syd1").model().lock = Some(holder);
    let error = w.deploy("v2").await.unwrap_err();
    assert!(matches!(error, crate::error::Error::Locked { .. }), "{error}");
    assert!(w.all_on("v1"));
}

/// A replica that never catches up, at the rollout level (the real probe asks
/// PostgreSQL).
#[tokio::test(start_paused = true)]
async fn a_replica_that_stays_behind_leaves_its_region_on_the_old_release() {
    let w = world(&[("syd", 1, 1), ("lax", 1, 1)], "");
    w.deploy("v1").await.unwrap();
    let observed = super::observe::observe(&w.fleet).await.unwrap();
    let engine = w.engine();
    let plan = engine.preview(&Operation::Deploy(w.release("v2"))).await.unwrap().unwrap();
    for fake in w.hosts.values() {
        fake.model().releases.push(crate::host::InstalledRelease {
            version: "v2".into(),
            sha256: "sha-v2".into(),
            installed_at: 9,
        });
    }
    let probe: super::rollout::ReplayProbe = Arc::new(|| Box::pin(async { Ok(Some(Lsn(10))) }));
    let mut gates = super::rollout::Gates::default();
    gates.replicas.insert(
        "lax".into(),
        super::rollout::ReplicaWait {
            replica: "db:5432/app".into(),
            probe,
            target: Lsn(100),
            timeout: Duration::from_secs(5),
        },
    );
    let summary = Box::pin(engine.roll_out(&plan, &observed, None, "bin/start".into(), gates)).await;
    assert!(summary.failure.is_none());
    assert_eq!(summary.behind.len(), 1);
    assert_eq!(summary.behind[0].lag_bytes, Some(90));
    assert_eq!(w.running()["syd"], ["v2"]);
    assert_eq!(w.running()["lax"], ["v1"]);
}

#[tokio::test(start_paused = true)]
async fn scaling_down_stops_instances_even_when_no_release_is_marked_current() {
    let w = world(&[("syd", 1, 2)], "");
    w.deploy("v1").await.unwrap();
    w.host("syd1").model().current = None;
    let doomed: Vec<String> = w.host("syd1").model().instances.keys().take(1).cloned().collect();
    let op =
        Operation::Converge { kind: Kind::Scale, regions: vec!["syd".into()], stop: Stops::Ids(doomed), done: None };
    w.engine().run(op).await.unwrap();
    assert_eq!(w.count_running(), 1);
    assert_eq!(w.host("syd1").model().current, None, "a converge marks nothing current");
}

#[tokio::test(start_paused = true)]
async fn removing_a_region_stops_every_instance_found_there_under_the_lock() {
    let w = world(&[("syd", 1, 1), ("lax", 1, 2)], "");
    w.deploy("v1").await.unwrap();
    let op = Operation::Converge {
        kind: Kind::RegionsRemove,
        regions: Vec::new(),
        stop: Stops::Region("lax".into()),
        done: Some("region `lax` removed".into()),
    };
    w.engine().run(op).await.unwrap();
    assert!(w.host("lax1").model().instances.is_empty());
    assert_eq!(w.running()["syd"], ["v1"]);
    let last = w.events().into_iter().rev().find_map(|e| match e {
        Event::Finished { message, .. } => Some(message),
        _ => None,
    });
    assert_eq!(last.as_deref(), Some("region `lax` removed"));
}
