//! Carrying out a plan's phases: the first shipping wave, the migration, the stops,
//! and the rollout with the later waves shipping beside it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::time::Instant;

use crate::error::Error;
use crate::host::Host;
use crate::report::{Event, Outcome};

use super::instance::Spec;
use super::observe::Observed;
use super::outcome::Summary;
use super::plan::{Instances, Kind, Plan, Wave};
use super::ports::PortPicker;
use super::rollout::{Gates, Rollout, Setup};
use super::ship::{self, Shipment};
use super::{migrate, millis, Engine};

impl Engine<'_> {
    /// Sends the first wave: every host of it that lacks the release gets it (a deploy
    /// from its artifact, anything else from a copy of the current release).
    pub(super) async fn ship_first(
        &self,
        plan: &Plan,
        shipment: Option<&Shipment<'_>>,
        observed: &Observed,
    ) -> Result<(), Error> {
        let first = plan.wave(Wave::First);
        let hosts: Vec<Host> = self.fleet.hosts().filter(|h| first.contains(h.name.as_str())).cloned().collect();
        if let Some(shipment) = shipment {
            return shipment.send(&self.reporter, hosts, observed, None, &|_, _| {}).await;
        }
        let missing: Vec<Host> =
            hosts.into_iter().filter(|h| plan.ship.iter().any(|s| s.host == h.name && !s.present)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        ship::ship_existing(self.settings, &self.reporter, self.fleet, observed, &plan.version, missing).await
    }

    /// The backup and the release_command, then what each replica must replay.
    pub(super) async fn migrate(&self, plan: &Plan, gates: &mut Gates, started: Instant) -> Result<(), Error> {
        let Some(migration) = &plan.migration else { return Ok(()) };
        let version = &plan.version;
        let failed = |message: String| Event::Finished {
            outcome: Outcome::Failed,
            version: Some(version.clone()),
            previous: plan.previous.clone(),
            message,
            duration_ms: millis(started.elapsed()),
        };
        if migration.backup {
            let taken = migrate::backup(
                self.settings,
                self.reporter.as_ref(),
                self.fleet,
                plan.previous.clone(),
                Some(version.clone()),
            )
            .await;
            if let Err(error) = taken {
                self.event(&failed("the backup failed, so the migration did not run; no instance was changed".into()));
                return Err(error);
            }
        }
        if let Err(error) =
            migrate::release_command(self.settings, &self.reporter, self.fleet, version, &migration.command).await
        {
            let still = plan.previous.as_deref().unwrap_or("the old version");
            self.event(&failed(format!("release_command failed; no instance was changed, {still} still runs")));
            return Err(error);
        }
        if !plan.replica_gates.is_empty() {
            gates.replicas = migrate::replica_waits(self.settings, self.fleet).await?;
        }
        Ok(())
    }

    /// Stops and removes the instances the plan stops, newest first.
    pub(super) async fn stop_instances(&self, plan: &Plan) -> Result<(), Error> {
        self.stop_steps(&plan.stops).await
    }

    /// Stops the instances of process groups that are no longer configured, once the
    /// rollout has succeeded; one that cannot be stopped is said, and left for the
    /// next operation.
    pub(super) async fn retire(&self, plan: &Plan, summary: &super::outcome::Summary) {
        // Only where the rollout went: a region it did not reach (another region's
        // converge, a replica behind) keeps them serving until it does.
        let rolled = |region: &str| {
            plan.instances.regions.iter().any(|r| r.region == region)
                && !summary.behind.iter().any(|b| b.region == region)
        };
        let steps: Vec<super::plan::StopStep> = plan.retire.iter().filter(|s| rolled(&s.region)).cloned().collect();
        if let Err(e) = self.stop_steps(&steps).await {
            self.event(&Event::Warning {
                message: format!("an instance of a process group fly.toml no longer has is still running: {e}"),
            });
        }
    }

    async fn stop_steps(&self, steps: &[super::plan::StopStep]) -> Result<(), Error> {
        let stop = crate::host::Stop {
            signal: self.settings.instance.kill_signal.clone(),
            timeout: self.settings.instance.kill_timeout,
        };
        for step in steps {
            let Some(host) = self.fleet.hosts().find(|h| h.name == step.host) else { continue };
            host.stop_instance(&step.id, &stop)
                .await
                .map_err(|source| Error::Host { step: "stopping an instance", source })?;
            host.remove_instance(&step.id)
                .await
                .map_err(|source| Error::Host { step: "removing an instance", source })?;
            self.event(&Event::InstanceStopped {
                region: step.region.clone(),
                host: host.name.clone(),
                instance: step.id.clone(),
            });
        }
        Ok(())
    }

    /// Rolls the plan's instances out while the later waves ship; a rollout that
    /// failed cuts off the uploads nobody needs any more (the host removes what it
    /// half received). Every upload has ended before this returns.
    pub(super) async fn roll_out(
        &self,
        plan: &Plan,
        observed: &Observed,
        shipment: Option<&Shipment<'_>>,
        start: String,
        mut gates: Gates,
    ) -> Summary {
        let mut senders = BTreeMap::new();
        let later: Vec<(Wave, Host)> = self
            .fleet
            .hosts()
            .filter_map(|h| {
                let ship = plan.ship.iter().find(|s| s.host == h.name && s.wave != Wave::First)?;
                Some((ship.wave, h.clone()))
            })
            .collect();
        if shipment.is_some() {
            for (_, host) in &later {
                let (tx, rx) = tokio::sync::watch::channel(None);
                senders.insert(host.name.clone(), tx);
                gates.shipped.insert(host.name.clone(), rx);
            }
        }
        let heard = |host: &str, result: Result<(), String>| {
            if let Some(tx) = senders.get(host) {
                tx.send_replace(Some(result));
            }
        };
        let source = self
            .fleet
            .hosts()
            .find(|h| h.transport.is_local() && plan.wave(Wave::First).contains(h.name.as_str()))
            .cloned();
        let (failed, mut on_failure) = tokio::sync::watch::channel(false);
        let shipping = async {
            let Some(shipment) = shipment else { return };
            // Each wave reports every host's outcome; a failure halts the rollout,
            // which then cuts off the rest.
            for wave in [Wave::Primary, Wave::Others] {
                let hosts: Vec<Host> = later.iter().filter(|(w, _)| *w == wave).map(|(_, h)| h.clone()).collect();
                let _ = shipment.send(&self.reporter, hosts, observed, source.clone(), &heard).await;
            }
        };
        let rollout = Rollout::new(Setup {
            hosts: self.fleet.hosts().map(|h| (h.name.clone(), h.clone())).collect(),
            specs: self
                .settings
                .groups
                .iter()
                .map(|group| {
                    let spec = Spec {
                        app: self.settings.app.clone(),
                        primary: self.settings.primary.clone(),
                        group: group.name.clone(),
                        instance: group.instance.clone(),
                        start: if group.name == self.settings.default_group {
                            start.clone()
                        } else {
                            group.start_command()
                        },
                        checks: group.checks.clone(),
                        wait_timeout: self.settings.rollout.wait_timeout,
                        as_ran: None,
                    };
                    (group.name.clone(), spec)
                })
                .collect(),
            primary: self.settings.primary.clone(),
            version: plan.version.clone(),
            reporter: Arc::clone(&self.reporter),
            no_revert: self.settings.rollout.no_revert,
            order: plan.order,
            gates,
            ports: self.port_picker(observed, &plan.instances).await,
            primary_addr: self.primary_addr(observed),
            // A new release, or new settings, may crash a moment after it passes its checks;
            // a rollback goes back to a release that ran, and a converge starts more of the
            // one that runs, so they are not held for the window.
            min_healthy: match plan.kind {
                Kind::Deploy | Kind::Restart => self.settings.rollout.min_healthy,
                _ => std::time::Duration::ZERO,
            },
            // A new release's canary is watched; a rollback returns to one that ran.
            canary: (plan.kind == Kind::Deploy && !self.settings.rollout.canary.time.is_zero())
                .then(|| self.settings.rollout.canary.clone()),
        });
        let ((), summary) = tokio::join!(
            async {
                tokio::select! {
                    () = shipping => {}
                    _ = on_failure.wait_for(|failed| *failed) => {}
                }
            },
            async {
                let summary = rollout.execute(plan.instances.regions.clone()).await;
                failed.send_replace(summary.failure.is_some());
                summary
            }
        );
        summary
    }

    /// `address:port` of a running primary-region instance, for `FERRY_PRIMARY_ADDR`.
    fn primary_addr(&self, observed: &Observed) -> Option<String> {
        let primary = &self.settings.primary;
        self.fleet.hosts().filter(|h| &h.region == primary).find_map(|h| {
            observed
                .get(&h.name)?
                .instances
                .iter()
                .find(|i| i.alive && &i.record.region == primary)
                .map(|i| format!("{}:{}", h.address(), i.record.port))
        })
    }

    /// A picker that avoids every port recorded for an instance or listening on a host
    /// where the plan creates an instance (read from SSH hosts only then).
    async fn port_picker(&self, observed: &Observed, instances: &Instances) -> PortPicker {
        let creating: BTreeSet<&str> = instances
            .changes()
            .filter(|step| step.previous.is_none() || step.beside)
            .map(|step| step.host.as_str())
            .collect();
        let hosts =
            self.fleet.hosts().filter(|h| !h.transport.is_local() && creating.contains(h.name.as_str())).cloned();
        let listening = crate::host::on_each(hosts, |host| async move { host.listening().await }).await;
        let mut taken: BTreeSet<(String, u16)> = BTreeSet::new();
        for state in observed.values() {
            for i in &state.instances {
                taken.insert((i.record.host.clone(), i.record.port));
                taken.extend(i.record.ports.values().map(|p| (i.record.host.clone(), *p)));
            }
        }
        for (name, ports) in listening {
            match ports {
                Ok(ports) => taken.extend(ports.into_iter().map(|p| (name.clone(), p))),
                Err(e) => self.event(&Event::Warning {
                    message: format!(
                        "could not list the ports in use on `{name}` ({e}); new instances there get a random free-looking port"
                    ),
                }),
            }
        }
        PortPicker::new(taken)
    }
}
