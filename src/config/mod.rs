//! `fly.toml` as ferry reads it: Fly's standard keys with Fly's meanings (legacy forms
//! included) plus ferry's own `[ferry]` section, resolved into a validated [`Config`] with
//! every default filled in. Problems point at `file:line:column`; unknown keys are
//! warnings, never failures. This module owns the schema, durations and validation; it
//! reads the one file it is given and does no other I/O, and it must not decide anything
//! about hosts, releases or deploys.

pub mod duration;
pub mod edit;
mod error;
mod ferry;
mod fly;
mod read;
mod schema;
#[cfg(test)]
mod tests;
mod tree;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use duration::parse_duration;
pub use error::{ConfigError, Warning};

use read::Reader;
use tree::Source;

/// A resolved, validated `fly.toml`. Serializes (durations as integer milliseconds) to
/// what `ferry config show --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The `fly.toml` file.
    #[serde(skip)]
    pub path: PathBuf,
    /// Its directory, absolute.
    #[serde(skip)]
    pub dir: PathBuf,
    pub app: String,
    pub primary_region: Option<String>,
    /// Normalised, such as `"SIGTERM"`.
    pub kill_signal: String,
    #[serde(serialize_with = "ms")]
    pub kill_timeout: Duration,
    pub deploy: DeployConfig,
    pub env: BTreeMap<String, String>,
    /// From `[http_service]`, else the first `[[services]]`.
    pub internal_port: Option<u16>,
    /// `[http_service]` first, then every `[[services]]`: what the front door serves.
    pub services: Vec<Service>,
    /// Every check from `[http_service]`, `[[services]]` and `[checks.*]`, in file order.
    pub checks: Vec<Check>,
    pub mounts: Vec<Mount>,
    pub processes: BTreeMap<String, String>,
    /// `[[restart]]`, in file order.
    pub restart: Vec<RestartConfig>,
    pub ferry: FerryConfig,
}

/// One `[[restart]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestartConfig {
    /// `always`, `on-failure` or `never` (Fly's `no` and `on-fail` are read too).
    pub policy: String,
    pub retries: Option<u32>,
    /// The process groups it applies to; empty: all.
    pub processes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeployConfig {
    pub release_command: Option<String>,
    /// `None`: no limit (`release_command_timeout = "none"`).
    #[serde(serialize_with = "opt_ms")]
    pub release_command_timeout: Option<Duration>,
    pub strategy: Strategy,
    pub max_unavailable: MaxUnavailable,
    #[serde(serialize_with = "ms")]
    pub wait_timeout: Duration,
}

/// Every strategy Fly accepts parses; refusing one it cannot run is the deploy's job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Rolling,
    Immediate,
    Canary,
    Bluegreen,
}

/// How many of a region's instances may be down at once during a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MaxUnavailable {
    /// Below 1: a share of the region's instances.
    Fraction(f64),
    /// 1 or more: a number of instances.
    Count(u32),
}

impl MaxUnavailable {
    /// Instances to replace at once in a region of `instances`: never fewer than one,
    /// so a rollout always makes progress.
    #[must_use]
    pub fn per_batch(&self, instances: usize) -> usize {
        let batch = match *self {
            // Instance counts are small, and `f` is in (0, 1), so the product fits.
            #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            MaxUnavailable::Fraction(f) => (f * instances as f64).floor() as usize,
            MaxUnavailable::Count(count) => usize::try_from(count).unwrap_or(usize::MAX).min(instances),
        };
        batch.max(1)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `[checks.NAME]`'s name, or where a service check is written, such as
    /// `services[0].tcp_checks[1]`.
    pub name: String,
    pub kind: CheckKind,
    /// The port probed: as written for `[checks.*]`, the service's `internal_port` for
    /// service checks; `None` when absent.
    pub port: Option<u16>,
    #[serde(serialize_with = "ms")]
    pub grace_period: Duration,
    #[serde(serialize_with = "ms")]
    pub interval: Duration,
    #[serde(serialize_with = "ms")]
    pub timeout: Duration,
    /// The process groups it checks: its service's for a service check, its own
    /// `processes` for `[checks.*]`; empty: the default group.
    pub processes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum CheckKind {
    Http {
        /// Uppercase; `GET` unless set.
        method: String,
        /// `/` unless set.
        path: String,
        headers: BTreeMap<String, String>,
        /// `protocol = "https"`.
        tls: bool,
    },
    Tcp,
}

/// A service of the app as fly.toml declares it: the port its instances listen on and
/// the public ports it is served on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub internal_port: u16,
    /// `tcp` (Fly's default) or `udp`; ferry's front door serves TCP only.
    pub protocol: String,
    /// Public ports in file order; `[http_service]` has 80 (`http`) and 443 (`tls`,
    /// `http`).
    pub ports: Vec<PublicPort>,
    /// The process groups it routes to; empty: the default group.
    pub processes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublicPort {
    pub port: u16,
    /// `http`, `tls`, ... as written; none means raw TCP.
    pub handlers: Vec<String>,
    pub force_https: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    pub source: String,
    pub destination: String,
    pub processes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FerryConfig {
    pub target: Target,
    /// Deploy root on the hosts.
    pub root: String,
    pub keep_releases: usize,
    /// Roll out one instance at a time everywhere, the primary region last (a
    /// database: replicas are updated before the primary restarts).
    pub primary_last: bool,
    #[serde(serialize_with = "ms")]
    pub replica_wait_timeout: Duration,
    /// How long a new instance must stay up after it passes its checks before it
    /// counts as healthy (`[ferry.deploy] min_healthy_time`, Nomad's meaning).
    #[serde(serialize_with = "ms")]
    pub min_healthy_time: Duration,
    /// `[ferry.deploy] canary_*`: how a canary is watched under real traffic.
    pub canary: CanaryConfig,
    pub build: BuildConfig,
    pub regions: BTreeMap<String, RegionConfig>,
    pub backup: BackupConfig,
    pub proxy: ProxyConfig,
}

/// How the `canary` strategy's first new instance is watched before the rest roll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CanaryConfig {
    /// `canary_time`: how long it takes a share of the requests, beside the old
    /// instances, before the rollout goes on; zero: it replaces its old instance at
    /// once (Fly's canary: one instance first, then the rest).
    #[serde(serialize_with = "ms")]
    pub time: Duration,
    /// `canary_weight`: the percentage of clients sent to it (sticky by cookie).
    pub weight: u8,
    /// `canary_max_errors`: the percentage of its answers that may be errors (5xx,
    /// or no answer) before it is aborted and removed.
    pub max_errors: u8,
}

/// `[ferry.proxy]`: ferry's front door on each host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyConfig {
    /// `false`: no front door; instances are reached on their own ports.
    pub enabled: bool,
    /// Where the front door listens on SSH hosts: an IP address, or `host` for the
    /// address the host is reached at (`user@ADDRESS:port`). `None`: all addresses.
    pub bind: Option<String>,
    /// `Host` names this app answers for on a port it shares with other apps of the
    /// account (`example.com`, `*.example.com`); empty: every name no other app claims.
    pub hosts: Vec<String>,
    /// Public port → the port actually listened on (`[ferry.proxy.ports] 80 = 8080`).
    pub ports: BTreeMap<u16, u16>,
    /// `tls_cert` and `tls_key`: PEM files on each host (`~/` for the account's home)
    /// for the ports whose handlers include `tls` (443 of `[http_service]`).
    pub tls: Option<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Local,
    Ssh,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildConfig {
    pub command: Option<String>,
    /// The release directory, absolute (written relative to the config's directory).
    pub path: PathBuf,
    pub start: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegionConfig {
    pub hosts: Vec<String>,
    /// Instances of each process group `counts` does not name.
    pub count: u32,
    /// `counts = { worker = 2 }`: instances of the named process groups.
    pub counts: BTreeMap<String, u32>,
    pub replica_url_env: Option<String>,
    pub replica_url: Option<String>,
}

impl RegionConfig {
    /// How many instances of `group` the region runs.
    #[must_use]
    pub fn count_of(&self, group: &str) -> u32 {
        self.counts.get(group).copied().unwrap_or(self.count)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupConfig {
    pub before_migrate: bool,
    pub database_url_env: String,
    pub run: BackupRun,
    pub keep: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupRun {
    Host,
    Local,
}

/// A loaded config and what was odd about it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// In file order.
    pub warnings: Vec<Warning>,
}

/// Reads and resolves the `fly.toml` at `path`.
///
/// # Errors
///
/// [`ConfigError::Read`] when the file cannot be read, otherwise as [`parse`].
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse(path, &text)
}

/// Resolves `text` as the `fly.toml` at `path`; `path` only names the file in messages
/// and gives the directory things are relative to.
///
/// # Errors
///
/// [`ConfigError::Syntax`] when `text` is not TOML, [`ConfigError::Invalid`] when a key
/// ferry uses holds a value that cannot mean what the key needs.
pub fn parse(path: &Path, text: &str) -> Result<Loaded, ConfigError> {
    let source = Source { path, text };
    let root = source.parse()?;
    let mut r = Reader::new(source);
    schema::warn_unknown(&mut r, &root, schema::ROOT, "");
    fly::warn_not_acted_on(&mut r, &root);

    let dir = absolute_dir(path);
    let app = app_name(&mut r, &root, &dir)?;
    let primary = fly::primary_region(&r, &root)?;
    fly::validate_service_ports(&r, &root)?;
    let config = Config {
        path: path.to_path_buf(),
        app,
        primary_region: primary.as_ref().map(|(name, _)| name.clone()),
        kill_signal: fly::kill_signal(&r, &root)?,
        kill_timeout: fly::kill_timeout(&r, &root)?,
        deploy: fly::deploy(&mut r, &root)?,
        env: fly::env(&r, &root)?,
        internal_port: fly::internal_port(&r, &root)?,
        services: fly::services(&r, &root)?,
        checks: fly::checks(&mut r, &root)?,
        mounts: fly::mounts(&r, &root)?,
        processes: fly::processes(&r, &root)?,
        restart: fly::restart(&r, &root)?,
        ferry: ferry::resolve(&r, &root, &dir)?,
        dir,
    };
    fly::warn_unknown_groups(&mut r, &root, &config.groups());
    if let Some((name, span)) = &primary {
        let regions = &config.ferry.regions;
        if !regions.is_empty() && !regions.contains_key(name) {
            let names: Vec<&str> = regions.keys().map(String::as_str).collect();
            r.warn(
                span,
                format!(
                    "`primary_region` `{name}` has no `[ferry.regions.{name}]`; regions are {}",
                    fly::backticked(&names)
                ),
            );
        }
    }
    Ok(Loaded { config, warnings: r.into_warnings() })
}

/// `app`, or else the config directory's name, with a warning: several real `fly.toml`
/// files leave the name to `fly deploy -a`.
fn app_name(r: &mut Reader<'_>, root: &tree::Table, dir: &Path) -> Result<String, ConfigError> {
    if let Some((name, _)) = fly::app(r, root)? {
        return Ok(name);
    }
    let span = root.get("app").map(|e| e.node.span.clone()).unwrap_or_default();
    let fallback = dir.file_name().and_then(|n| n.to_str()).filter(|n| fly::valid_app_name(n));
    let Some(fallback) = fallback else {
        return Err(r.invalid(
            &span,
            format!("missing `app`, and the directory name of `{}` is not a usable app name", dir.display()),
        ));
    };
    let problem = if root.get("app").is_some() { "`app` is empty" } else { "missing `app`" };
    r.warn(&span, format!("{problem}; using the directory name `{fallback}`"));
    Ok(fallback.to_string())
}

fn absolute_dir(path: &Path) -> PathBuf {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    ferry::without_dots(&std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf()))
}

/// Whether `name` can be an app's name (one plain path component on every host).
#[must_use]
pub fn valid_app_name(name: &str) -> bool {
    fly::valid_app_name(name)
}

/// Whether `name` can be a region's name.
#[must_use]
pub fn valid_region_name(name: &str) -> bool {
    ferry::valid_region_name(name)
}

/// The process group of an app without `[processes]`, and Fly's preferred default.
pub const DEFAULT_GROUP: &str = "app";

impl Config {
    /// What runs one instance of the default process group: `[ferry.build] start`, else
    /// its `[processes]` command.
    #[must_use]
    pub fn start_command(&self) -> Option<&str> {
        self.start_of(&self.default_group())
    }

    /// What runs one instance of `group`: its `[processes]` command, else `[ferry.build]
    /// start`; for the default group `[ferry.build] start` comes first.
    #[must_use]
    pub fn start_of(&self, group: &str) -> Option<&str> {
        let own = self.processes.get(group).map(String::as_str).filter(|c| !c.trim().is_empty());
        let build = self.ferry.build.start.as_deref();
        if group == self.default_group() {
            build.or(own)
        } else {
            own.or(build)
        }
    }

    /// The process groups, Fly's way: the names in `[processes]` in sorted order, or
    /// just `app` without any.
    #[must_use]
    pub fn groups(&self) -> Vec<String> {
        if self.processes.is_empty() {
            vec![DEFAULT_GROUP.to_string()]
        } else {
            self.processes.keys().cloned().collect()
        }
    }

    /// The group that a service, check, mount or restart policy without `processes`
    /// belongs to: `app` when there is one, else the first in sorted order.
    #[must_use]
    pub fn default_group(&self) -> String {
        let groups = self.groups();
        if groups.iter().any(|g| g == DEFAULT_GROUP) {
            DEFAULT_GROUP.to_string()
        } else {
            groups.into_iter().next().unwrap_or_else(|| DEFAULT_GROUP.to_string())
        }
    }

    /// Whether something written with `processes` applies to `group`.
    #[must_use]
    pub fn applies(&self, processes: &[String], group: &str) -> bool {
        if processes.is_empty() {
            group == self.default_group()
        } else {
            processes.iter().any(|p| p == group)
        }
    }

    /// `[ferry.regions]`, or when there are none a single region named after
    /// `primary_region` (else `local`) with one instance and no hosts.
    #[must_use]
    pub fn regions(&self) -> Vec<(String, RegionConfig)> {
        if !self.ferry.regions.is_empty() {
            return self.ferry.regions.iter().map(|(name, region)| (name.clone(), region.clone())).collect();
        }
        let name = self.primary_region.clone().unwrap_or_else(|| "local".to_string());
        vec![(
            name,
            RegionConfig {
                hosts: Vec::new(),
                count: 1,
                counts: BTreeMap::new(),
                replica_url_env: None,
                replica_url: None,
            },
        )]
    }

    /// `primary_region`, else the first region.
    #[must_use]
    pub fn primary(&self) -> String {
        if let Some(primary) = &self.primary_region {
            return primary.clone();
        }
        self.regions().into_iter().next().map_or_else(|| "local".to_string(), |(name, _)| name)
    }
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `serialize_with` passes a reference
fn ms<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

#[allow(clippy::ref_option)] // serde's `serialize_with` passes a reference
fn opt_ms<S: serde::Serializer>(duration: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
    match duration {
        Some(duration) => ms(duration, serializer),
        None => serializer.serialize_none(),
    }
}
