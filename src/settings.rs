//! What one invocation runs with, resolved once: the command line wins over the
//! environment, which wins over `fly.toml`, which wins over ferry's defaults. Every
//! default and override is written here and nowhere else; everything downstream reads
//! these plain structs and never goes back to [`Config`] in the middle of an operation.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{BackupRun, BuildConfig, Config, MaxUnavailable, Mount, RestartConfig, Strategy, Target};
use crate::error::Error;
use crate::health::Checks;
use crate::host::{Restart, RestartPolicy};
use crate::transport::SshOptions;

/// What the command line may override for an operation that rolls instances out.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub wait_timeout: Option<Duration>,
    pub strategy: Option<Strategy>,
    pub no_revert: bool,
    pub lock_wait: Option<Duration>,
    /// Take a backup before the release_command even without `before_migrate`.
    pub backup: bool,
    pub skip_release_command: bool,
}

/// Everything an operation needs to know about the app, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub app: String,
    pub primary: String,
    /// The directory of `fly.toml`: `.ferry/` (build output, the local target) lives here.
    pub dir: PathBuf,
    pub target: Target,
    /// Deploy root on SSH hosts.
    pub root: String,
    pub ssh: SshOptions,
    /// The default process group's: what `[processes]`-less code paths run.
    pub instance: InstanceSettings,
    pub checks: Checks,
    /// Every process group (sorted, as Fly orders them), the default one included.
    pub groups: Vec<GroupSettings>,
    /// The group services, checks and mounts without `processes` belong to.
    pub default_group: String,
    pub rollout: RolloutSettings,
    /// How long to wait for another operation's lock (`None`: fail at once).
    pub lock_wait: Option<Duration>,
    pub keep_releases: usize,
    pub migration: MigrationSettings,
    pub backup: BackupSettings,
    /// `[ferry.build]`: the build command, the release directory, the start command.
    pub build: BuildConfig,
    /// The front door on each host.
    pub proxy: ProxySettings,
    /// What resolving found odd (a check skipped, ...), for the operation to report.
    pub warnings: Vec<String>,
}

/// The front door: what it serves, resolved from `[http_service]`, `[[services]]` and
/// `[ferry.proxy]`.
#[derive(Debug, Clone, Default)]
pub struct ProxySettings {
    /// Doors on SSH hosts: the public ports (after `[ferry.proxy.ports]`).
    pub public: Vec<DoorPort>,
    /// Doors on the local target: the service's internal port, on each region's own
    /// loopback address.
    pub local: Vec<DoorPort>,
    /// `[ferry.proxy] bind`: an address, `host`, or all addresses.
    pub bind: Option<String>,
    pub hosts: Vec<String>,
    /// `[ferry.proxy] tls_cert` and `tls_key`.
    pub tls: Option<crate::host::proto::TlsFiles>,
}

impl ProxySettings {
    /// Whether the app has a front door on `target`'s hosts.
    pub fn serves(&self, target: Target) -> bool {
        match target {
            Target::Local => !self.local.is_empty(),
            Target::Ssh => !self.public.is_empty(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoorPort {
    /// The process groups whose instances it routes to.
    pub groups: Vec<String>,
    pub port: u16,
    pub kind: crate::host::proto::DoorKind,
    /// TLS is terminated here (`handlers = ["tls", "http"]`, with certificates).
    pub tls: bool,
    /// `force_https`: every request is redirected to this TLS port.
    pub redirect_https: Option<u16>,
    /// Another service's `internal_port` than the first's (see [`crate::host::proto::Door`]).
    pub target: Option<u16>,
}

/// The doors of `config`, and what could not be served.
fn proxy(config: &Config, warnings: &mut Vec<String>) -> ProxySettings {
    use crate::host::proto::DoorKind;
    let proxy = &config.ferry.proxy;
    if !proxy.enabled {
        return ProxySettings::default();
    }
    let remap = |port: u16| proxy.ports.get(&port).copied().unwrap_or(port);
    let tls =
        proxy.tls.as_ref().map(|(cert, key)| crate::host::proto::TlsFiles { cert: cert.clone(), key: key.clone() });
    let mut settings =
        ProxySettings { bind: proxy.bind.clone(), hosts: proxy.hosts.clone(), tls, ..ProxySettings::default() };
    for service in &config.services {
        if service.protocol != "tcp" {
            warnings.push(format!(
                "the front door serves TCP only; the {} service on port {} is not served",
                service.protocol, service.internal_port
            ));
            continue;
        }
        // The first service is on each instance's $PORT; another one on the port the
        // instance gets for it (`FERRY_PORT_<internal_port>`).
        let target = Some(service.internal_port).filter(|p| Some(*p) != config.internal_port);
        let groups: Vec<String> =
            config.groups().into_iter().filter(|g| config.applies(&service.processes, g)).collect();
        let mut any_http = false;
        // The service's TLS port, where `force_https` sends plain HTTP.
        let tls_port = service
            .ports
            .iter()
            .find(|p| p.handlers.iter().any(|h| h == "tls") && p.handlers.iter().any(|h| h == "http"))
            .map(|p| remap(p.port));
        for public in &service.ports {
            let kind = if public.handlers.iter().any(|h| h == "http") {
                any_http = true;
                DoorKind::Http
            } else if public.handlers.is_empty() {
                DoorKind::Tcp
            } else {
                continue;
            };
            let tls = public.handlers.iter().any(|h| h == "tls");
            if tls && settings.tls.is_none() {
                // Served once certificates are configured.
                continue;
            }
            let redirect_https = (public.force_https && !tls && settings.tls.is_some()).then_some(tls_port).flatten();
            let door = DoorPort { groups: groups.clone(), port: remap(public.port), kind, tls, redirect_https, target };
            let taken = settings.public.iter().any(|d| d.port == door.port);
            match settings.public.iter_mut().find(|d| DoorPort { groups: d.groups.clone(), ..door.clone() } == **d) {
                Some(same) => merge_groups(&mut same.groups, &groups),
                None if taken => warnings
                    .push(format!("public port {} is given to two services; the first one is served there", door.port)),
                None => settings.public.push(door),
            }
        }
        let kind = if any_http || service.ports.is_empty() { DoorKind::Http } else { DoorKind::Tcp };
        let door = DoorPort {
            groups: groups.clone(),
            port: remap(service.internal_port),
            kind,
            tls: false,
            redirect_https: None,
            target,
        };
        match settings.local.iter_mut().find(|d| d.port == door.port) {
            Some(same) if same.target == door.target => merge_groups(&mut same.groups, &groups),
            Some(_) => warnings.push(format!(
                "port {} is given to two services; on the local target the first one is served there",
                door.port
            )),
            None => settings.local.push(door),
        }
        // On the local target TLS is served where `[ferry.proxy.ports]` moves the TLS
        // port to (no privileged port on a developer's machine).
        if let (Some(port), true) = (tls_port, settings.tls.is_some()) {
            let moved = service
                .ports
                .iter()
                .any(|p| p.handlers.iter().any(|h| h == "tls") && proxy.ports.contains_key(&p.port));
            match settings.local.iter_mut().find(|d| d.port == port) {
                Some(same) if moved => merge_groups(&mut same.groups, &groups),
                None if moved => settings.local.push(DoorPort {
                    groups: groups.clone(),
                    port,
                    kind: DoorKind::Http,
                    tls: true,
                    redirect_https: None,
                    target,
                }),
                _ => {}
            }
        }
    }
    settings
}

fn merge_groups(into: &mut Vec<String>, more: &[String]) {
    for group in more {
        if !into.contains(group) {
            into.push(group.clone());
        }
    }
    into.sort();
}

/// One process group: how its instances run and are checked.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    pub name: String,
    pub instance: InstanceSettings,
    pub checks: Checks,
    /// Why its instances cannot start beside the ones they replace (no front door
    /// routes to it, a volume only one may hold); `None` when they can.
    pub not_beside: Option<&'static str>,
}

impl GroupSettings {
    pub fn start_command(&self) -> String {
        self.instance.start_command()
    }
}

/// How every instance runs.
#[derive(Debug, Clone)]
pub struct InstanceSettings {
    /// `[env]`.
    pub env: BTreeMap<String, String>,
    pub kill_signal: String,
    pub kill_timeout: Duration,
    /// The `[mounts]` of the `app` process group (the one ferry runs).
    pub mounts: Vec<Mount>,
    /// `[ferry.build] start`, else `[processes] app`; `None`: the release's `bin/start`.
    pub start: Option<String>,
    /// `[[restart]]` for the `app` group; Fly's default without one.
    pub restart: Restart,
    /// The `internal_port`s of its services after the first: each instance gets a
    /// port of its own for each (`FERRY_PORT_<internal_port>`).
    pub extra_ports: Vec<u16>,
}

/// The command that runs one instance when none is configured.
pub const DEFAULT_START: &str = "bin/start";

impl InstanceSettings {
    /// The start command: the configured one, else the release's `bin/start`.
    pub fn start_command(&self) -> String {
        self.start.clone().unwrap_or_else(|| DEFAULT_START.to_string())
    }
}

/// Which region goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// The primary region, then the others in parallel (the default).
    PrimaryFirst,
    /// One region after another, the primary last, one instance at a time
    /// (`[ferry] primary_last`: a database's primary restarts after its replicas).
    PrimaryLast,
}

#[derive(Debug, Clone)]
pub struct RolloutSettings {
    /// The strategy a deploy rolls by (`bluegreen` included: see
    /// [`RolloutSettings::runnable`]); `rolling` under `primary_last`.
    pub strategy: Strategy,
    /// The strategy asked for, on the command line or in fly.toml.
    pub requested: Strategy,
    pub max_unavailable: MaxUnavailable,
    pub wait_timeout: Duration,
    pub no_revert: bool,
    pub order: Order,
    /// How long a new instance must stay up after it passes its checks.
    pub min_healthy: Duration,
    /// Why a new instance cannot start beside the one it replaces (no front door, a
    /// volume only one may hold); `None` when it can.
    pub not_beside: Option<&'static str>,
    /// How a canary is watched under real traffic (`[ferry.deploy] canary_*`).
    pub canary: crate::config::CanaryConfig,
}

impl RolloutSettings {
    /// The strategy a rollout that was not asked for by name runs (a rollback, a
    /// restart): `bluegreen` where instances can run side by side, else `rolling`.
    pub fn runnable(&self) -> Strategy {
        match self.strategy {
            Strategy::Bluegreen if self.not_beside.is_some() => Strategy::Rolling,
            other => other,
        }
    }

    /// Refuses a strategy ferry cannot run for this app, before anything happens.
    pub fn refuse_unsupported(&self) -> Result<(), Error> {
        if let (Strategy::Bluegreen, Some(why)) = (self.requested, self.not_beside) {
            return Err(Error::Usage {
                message: format!(
                    "the `bluegreen` strategy starts every new instance beside the one it replaces, behind the front door, and {why}"
                ),
                hint: Some(
                    "use `strategy = \"rolling\"` or `\"canary\"` in `[deploy]`, or pass `--strategy rolling`".into(),
                ),
            });
        }
        Ok(())
    }
}

/// Where a region's read replica is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaSource {
    /// `replica_url`, written in fly.toml.
    Url(String),
    /// `replica_url_env`: a variable of `[env]` or the app's secrets.
    Env(String),
}

#[derive(Debug, Clone)]
pub struct MigrationSettings {
    /// `[deploy] release_command`; `None` also when `--skip-release-command`.
    pub command: Option<String>,
    pub timeout: Option<Duration>,
    /// pg_dump first (`[ferry.backup] before_migrate` or `--backup`).
    pub backup_first: bool,
    pub replica_wait_timeout: Duration,
    /// By region (never the primary): its read replica.
    pub replicas: BTreeMap<String, ReplicaSource>,
}

#[derive(Debug, Clone)]
pub struct BackupSettings {
    pub database_url_env: String,
    pub run: BackupRun,
    pub keep: usize,
}

/// The `[[restart]]` of `group`: `always` restarts without a limit unless
/// `retries` says, `on-failure` up to 10 times by default (Fly's default for machines a
/// deploy creates, and what applies without any `[[restart]]`).
fn restart_policy(restarts: &[RestartConfig], group: &str) -> Restart {
    let Some(entry) = restarts.iter().find(|r| r.processes.is_empty() || r.processes.iter().any(|p| p == group)) else {
        return Restart::default();
    };
    let policy = match entry.policy.as_str() {
        "always" => RestartPolicy::Always,
        "never" => RestartPolicy::Never,
        _ => RestartPolicy::OnFailure,
    };
    let unlimited = if policy == RestartPolicy::Always { u32::MAX } else { Restart::default().retries };
    Restart { policy, retries: entry.retries.unwrap_or(unlimited) }
}

/// Every process group of `config`, resolved.
fn groups(config: &Config, warnings: &mut Vec<String>) -> Vec<GroupSettings> {
    config
        .groups()
        .into_iter()
        .map(|name| {
            // Something should listen on its $PORT when a service is bound to it (whether
            // or not a front door serves it).
            let served = config.services.iter().any(|s| config.applies(&s.processes, &name));
            GroupSettings {
                instance: InstanceSettings {
                    env: config.env.clone(),
                    kill_signal: config.kill_signal.clone(),
                    kill_timeout: config.kill_timeout,
                    mounts: config.mounts.iter().filter(|m| config.applies(&m.processes, &name)).cloned().collect(),
                    start: config.start_of(&name).map(str::to_string),
                    restart: restart_policy(&config.restart, &name),
                    extra_ports: crate::health::extra_ports(config, &name),
                },
                checks: Checks::of_group(config, &name, served, warnings),
                not_beside: None,
                name,
            }
        })
        .collect()
}

impl Settings {
    /// Resolves the settings of one invocation.
    pub fn resolve(config: &Config, ssh: SshOptions, overrides: &Overrides) -> Settings {
        let mut warnings = Vec::new();
        let proxy = proxy(config, &mut warnings);
        let groups = groups(config, &mut warnings);
        let default_group = config.default_group();
        let default = groups.iter().find(|g| g.name == default_group).unwrap_or(&groups[0]).clone();
        let primary = config.primary();
        let primary_last = config.ferry.primary_last;
        let requested = overrides.strategy.unwrap_or(config.deploy.strategy);
        let rollout = RolloutSettings {
            strategy: if primary_last { Strategy::Rolling } else { requested },
            requested,
            max_unavailable: if primary_last { MaxUnavailable::Count(1) } else { config.deploy.max_unavailable },
            wait_timeout: overrides.wait_timeout.unwrap_or(config.deploy.wait_timeout),
            no_revert: overrides.no_revert,
            order: if primary_last { Order::PrimaryLast } else { Order::PrimaryFirst },
            min_healthy: config.ferry.min_healthy_time,
            not_beside: None,
            canary: config.ferry.canary.clone(),
        };
        let replicas = config
            .ferry
            .regions
            .iter()
            .filter(|(name, _)| **name != primary)
            .filter_map(|(name, region)| {
                let source = match (&region.replica_url, &region.replica_url_env) {
                    (Some(url), _) => ReplicaSource::Url(url.clone()),
                    (None, Some(var)) => ReplicaSource::Env(var.clone()),
                    (None, None) => return None,
                };
                Some((name.clone(), source))
            })
            .collect();
        let mut settings = Settings {
            app: config.app.clone(),
            primary,
            dir: config.dir.clone(),
            target: config.ferry.target,
            root: config.ferry.root.trim_end_matches('/').to_string(),
            ssh,
            instance: default.instance,
            checks: default.checks,
            groups,
            default_group,
            rollout,
            lock_wait: overrides.lock_wait,
            keep_releases: config.ferry.keep_releases,
            migration: MigrationSettings {
                command: config.deploy.release_command.clone().filter(|_| !overrides.skip_release_command),
                timeout: config.deploy.release_command_timeout,
                backup_first: overrides.backup || config.ferry.backup.before_migrate,
                replica_wait_timeout: config.ferry.replica_wait_timeout,
                replicas,
            },
            backup: BackupSettings {
                database_url_env: config.ferry.backup.database_url_env.clone(),
                run: config.ferry.backup.run,
                keep: config.ferry.backup.keep,
            },
            build: config.ferry.build.clone(),
            proxy,
            warnings,
        };
        let target = settings.target;
        let serves = settings.proxy.serves(target);
        let doors: Vec<&DoorPort> = match target {
            Target::Local => settings.proxy.local.iter().collect(),
            Target::Ssh => settings.proxy.public.iter().collect(),
        };
        for group in &mut settings.groups {
            group.not_beside = if !serves {
                Some("this app has no front door (no `[http_service]` or `[[services]]`, or `[ferry.proxy] enabled = false`)")
            } else if !doors.iter().any(|d| d.groups.contains(&group.name)) {
                Some("no service of the front door routes to this process group")
            } else if !group.instance.mounts.is_empty() {
                Some("this app's `[mounts]` volume can be held by one instance only")
            } else {
                None
            };
        }
        settings.rollout.not_beside =
            settings.groups.iter().find(|g| g.name == settings.default_group).and_then(|g| g.not_beside);
        settings
    }

    /// The settings of process group `name` (the default group's for one that is not
    /// configured).
    pub fn group(&self, name: &str) -> &GroupSettings {
        self.groups
            .iter()
            .find(|g| g.name == name)
            .or_else(|| self.groups.iter().find(|g| g.name == self.default_group))
            .unwrap_or(&self.groups[0])
    }

    /// Where ferry keeps what it builds, next to `fly.toml`.
    pub fn build_dir(&self) -> PathBuf {
        self.dir.join(".ferry").join("build")
    }

    /// The archive of `version` kept in [`Settings::build_dir`].
    pub fn kept_archive(&self, version: &str) -> PathBuf {
        self.build_dir().join(format!("{}-{version}.tar.gz", self.app))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!("app = \"a\"\nprimary_region = \"syd\"\n{extra}");
        crate::config::parse(std::path::Path::new("/tmp/x/fly.toml"), &text).unwrap().config
    }

    #[test]
    fn the_command_line_wins_over_fly_toml() {
        let config = config("[deploy]\n  wait_timeout = \"1m\"\n  strategy = \"canary\"\n");
        let resolved = Settings::resolve(&config, SshOptions::default(), &Overrides::default());
        assert_eq!(resolved.rollout.wait_timeout, Duration::from_mins(1));
        assert_eq!(resolved.rollout.strategy, Strategy::Canary);
        let overrides = Overrides {
            wait_timeout: Some(Duration::from_secs(3)),
            strategy: Some(Strategy::Immediate),
            ..Overrides::default()
        };
        let resolved = Settings::resolve(&config, SshOptions::default(), &overrides);
        assert_eq!(resolved.rollout.wait_timeout, Duration::from_secs(3));
        assert_eq!(resolved.rollout.strategy, Strategy::Immediate);
    }

    #[test]
    fn primary_last_means_one_at_a_time_rolling_primary_last() {
        let config =
            config("[deploy]\n  strategy = \"immediate\"\n  max_unavailable = 3\n[ferry]\n  primary_last = true\n");
        let overrides = Overrides { strategy: Some(Strategy::Canary), ..Overrides::default() };
        let resolved = Settings::resolve(&config, SshOptions::default(), &overrides);
        assert_eq!(resolved.rollout.order, Order::PrimaryLast);
        assert_eq!(resolved.rollout.strategy, Strategy::Rolling);
        assert_eq!(resolved.rollout.max_unavailable, MaxUnavailable::Count(1));
    }

    #[test]
    fn skipping_the_release_command_leaves_none() {
        let config = config("[deploy]\n  release_command = \"bin/migrate\"\n");
        let skip = Overrides { skip_release_command: true, ..Overrides::default() };
        assert_eq!(Settings::resolve(&config, SshOptions::default(), &skip).migration.command, None);
        let run = Settings::resolve(&config, SshOptions::default(), &Overrides::default());
        assert_eq!(run.migration.command.as_deref(), Some("bin/migrate"));
    }

    #[test]
    fn the_restart_policy_of_the_app_group_applies_with_fly_defaults() {
        let none = Settings::resolve(&config(""), SshOptions::default(), &Overrides::default());
        assert_eq!(none.instance.restart, Restart { policy: RestartPolicy::OnFailure, retries: 10 });
        let always = config("[[restart]]\n  policy = \"always\"\n");
        let resolved = Settings::resolve(&always, SshOptions::default(), &Overrides::default());
        assert_eq!(resolved.instance.restart.policy, RestartPolicy::Always);
        let other = config("[[restart]]\n  policy = \"never\"\n  processes = [\"worker\"]\n");
        let resolved = Settings::resolve(&other, SshOptions::default(), &Overrides::default());
        assert_eq!(resolved.instance.restart.policy, RestartPolicy::OnFailure, "another group's policy");
    }

    #[test]
    fn each_process_group_runs_its_own_command_and_only_served_ones_go_beside() {
        let text = "[processes]\n  web = \"bin/x web\"\n  worker = \"bin/x work\"\n\
                    [http_service]\n  internal_port = 8080\n\
                    [[restart]]\n  policy = \"never\"\n  processes = [\"worker\"]\n";
        let resolved = Settings::resolve(&config(text), SshOptions::default(), &Overrides::default());
        assert_eq!(resolved.default_group, "web");
        assert_eq!(resolved.instance.start_command(), "bin/x web");
        let worker = resolved.group("worker");
        assert_eq!(worker.start_command(), "bin/x work");
        assert_eq!(worker.instance.restart.policy, RestartPolicy::Never);
        assert!(worker.checks.probes().is_empty(), "a worker with no service and no checks is not probed");
        assert!(worker.not_beside.is_some() && resolved.group("web").not_beside.is_none());
        assert_eq!(resolved.proxy.local[0].groups, ["web"]);
    }

    #[test]
    fn a_start_command_falls_back_to_bin_start() {
        let resolved = Settings::resolve(&config(""), SshOptions::default(), &Overrides::default());
        assert_eq!(resolved.instance.start_command(), "bin/start");
        let resolved = Settings::resolve(
            &config("[processes]\n  app = \"bin/x serve\"\n"),
            SshOptions::default(),
            &Overrides::default(),
        );
        assert_eq!(resolved.instance.start_command(), "bin/x serve");
    }
}
