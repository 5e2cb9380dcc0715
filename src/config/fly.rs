//! Fly's standard keys with Fly's meanings and defaults, legacy forms included: integer
//! seconds for `kill_timeout`, integer milliseconds for check durations, `[mount]`,
//! `[services]` written as one table, string ports, non-string `[env]` values,
//! `processes = []`. Owns turning those keys into ferry's types; must not read `[ferry]`.

use std::collections::BTreeMap;
use std::time::Duration;

use super::read::{join, Reader, Unit};
use super::tree::{Entry, Node, Span, Table, Value};
use super::{
    Check, CheckKind, ConfigError, DeployConfig, MaxUnavailable, Mount, PublicPort, RestartConfig, Service, Strategy,
};

/// Fly's default: SIGINT, unless `kill_signal` says otherwise.
pub(super) const DEFAULT_KILL_SIGNAL: &str = "SIGINT";
/// Fly's default grace between the kill signal and SIGKILL.
pub(super) const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Fly's defaults for `[deploy]`. Fly replaces 33% of machines at a time by default;
/// ferry replaces one instance per region at a time unless told otherwise.
pub(super) const DEFAULT_RELEASE_COMMAND_TIMEOUT: Duration = Duration::from_mins(5);
pub(super) const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_mins(5);
pub(super) const DEFAULT_MAX_UNAVAILABLE: MaxUnavailable = MaxUnavailable::Count(1);
/// Check defaults: Fly documents `interval` 15s and `timeout` 2s for service checks
/// (the values `fly launch` writes) and no grace period unless one is set.
pub(super) const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(15);
pub(super) const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
pub(super) const DEFAULT_CHECK_GRACE_PERIOD: Duration = Duration::ZERO;

/// Fly's documented signals plus flyctl's own list.
const SIGNALS: &[&str] = &[
    "SIGABRT", "SIGALRM", "SIGFPE", "SIGHUP", "SIGILL", "SIGINT", "SIGKILL", "SIGPIPE", "SIGQUIT", "SIGSEGV",
    "SIGSTOP", "SIGTERM", "SIGTRAP", "SIGUSR1", "SIGUSR2",
];

/// `app`, trimmed; `None` when absent or empty (some real files ship `app = ""`).
pub(super) fn app(r: &Reader<'_>, root: &Table) -> Result<Option<(String, Span)>, ConfigError> {
    let Some(entry) = root.get("app") else { return Ok(None) };
    let name = r.string(&entry.node, "app")?.trim();
    if name.is_empty() {
        return Ok(None);
    }
    if !valid_app_name(name) {
        let template = if name.contains(['{', '}', '<', '>', '$']) {
            " (it looks like a template placeholder: put the app's real name here)"
        } else {
            ""
        };
        return Err(r.invalid(
            &entry.node.span,
            format!("`app` `{name}` is not a usable app name{template}: use letters, digits, `-`, `_` and `.`, starting with a letter or digit"),
        ));
    }
    Ok(Some((name.to_string(), entry.node.span.clone())))
}

/// The app name becomes a directory on every host, so it must be one plain path component.
pub(super) fn valid_app_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Fly keys ferry reads without acting on them, each with what ferry does instead.
const NOT_ACTED_ON: &[(&str, &str, &str)] = &[
    ("build", "image", "ferry deploys release tarballs built by `[ferry.build]`, not images"),
    ("build", "dockerfile", "ferry deploys release tarballs built by `[ferry.build]`, not images"),
    ("build", "builder", "ferry deploys release tarballs built by `[ferry.build]`, not images"),
    ("build", "buildpacks", "ferry deploys release tarballs built by `[ferry.build]`, not images"),
    ("experimental", "cmd", "the start command is `[ferry.build] start` or `[processes]`"),
    ("experimental", "entrypoint", "the start command is `[ferry.build] start` or `[processes]`"),
    ("", "vm", "instances run as processes on the hosts, with the hosts' CPU and memory"),
    ("", "statics", "the front door does not serve static files; the app serves them"),
];

/// One warning per key ferry reads but does not act on, and per UDP service (the front
/// door serves TCP and HTTP only), saying what ferry does instead.
pub(super) fn warn_not_acted_on(r: &mut Reader<'_>, root: &Table) {
    for (section, key, instead) in NOT_ACTED_ON {
        let entry = if section.is_empty() {
            root.get(key)
        } else {
            root.get(section).and_then(|s| match &s.node.value {
                Value::Table(t) => t.get(key),
                _ => None,
            })
        };
        if let Some(entry) = entry {
            let name = match (&entry.node.value, section.is_empty()) {
                (Value::Array(_), true) => format!("[[{key}]]"),
                (_, true) => format!("[{key}]"),
                _ => format!("`{section}.{key}`"),
            };
            r.warn_at_deploy(&entry.node.span, format!("{name} is not used by ferry: {instead}"));
        }
    }
    let Some(services) = root.get("services") else { return };
    let Ok(list) = r.tables(&services.node, "services") else { return };
    let udp: Vec<Span> = list
        .into_iter()
        .filter_map(|(_, service)| {
            let protocol = service.get("protocol")?;
            match &protocol.node.value {
                Value::String(p) if p.eq_ignore_ascii_case("udp") => Some(protocol.node.span.clone()),
                _ => None,
            }
        })
        .collect();
    for span in udp {
        r.warn_at_deploy(
            &span,
            "a UDP service gets no front door (it serves TCP and HTTP); instances still listen on its internal_port",
        );
    }
}

pub(super) fn primary_region(r: &Reader<'_>, root: &Table) -> Result<Option<(String, Span)>, ConfigError> {
    let Some(region) = r.opt_string(root, "", "primary_region")? else { return Ok(None) };
    let span = root.get("primary_region").map(|e| e.node.span.clone()).unwrap_or_default();
    if !super::ferry::valid_region_name(&region) {
        return Err(r.invalid(
            &span,
            format!("`primary_region` `{region}` is not a region name: use lowercase letters, digits and `-`"),
        ));
    }
    Ok(Some((region, span)))
}

pub(super) fn kill_signal(r: &Reader<'_>, root: &Table) -> Result<String, ConfigError> {
    let Some(entry) = root.get("kill_signal") else { return Ok(DEFAULT_KILL_SIGNAL.to_string()) };
    let written = r.string(&entry.node, "kill_signal")?;
    normalise_signal(written).ok_or_else(|| {
        r.invalid(
            &entry.node.span,
            format!("unknown `kill_signal` `{written}`: expected one of {}", backticked(SIGNALS)),
        )
    })
}

/// `"term"`, `"TERM"`, `"sigterm"` and `"SIGTERM"` are all `"SIGTERM"`.
pub(super) fn normalise_signal(written: &str) -> Option<String> {
    let upper = written.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    SIGNALS.contains(&name.as_str()).then_some(name)
}

/// `kill_timeout`, or the Nomad-era `experimental.kill_timeout`; bare numbers are seconds.
pub(super) fn kill_timeout(r: &Reader<'_>, root: &Table) -> Result<Duration, ConfigError> {
    let legacy = root.get("experimental").and_then(|e| e.node.as_table()).and_then(|t| t.get("kill_timeout"));
    let (entry, path) = match (root.get("kill_timeout"), legacy) {
        (Some(entry), _) => (entry, "kill_timeout"),
        (None, Some(entry)) => (entry, "experimental.kill_timeout"),
        (None, None) => return Ok(DEFAULT_KILL_TIMEOUT),
    };
    Ok(r.duration(&entry.node, path, Unit::Secs)?.unwrap_or(DEFAULT_KILL_TIMEOUT))
}

pub(super) fn deploy(r: &mut Reader<'_>, root: &Table) -> Result<DeployConfig, ConfigError> {
    let empty = Table::default();
    let table = match root.get("deploy") {
        Some(entry) => r.table(&entry.node, "deploy")?,
        None => &empty,
    };
    let strategy = match table.get("strategy") {
        Some(entry) => strategy(r, &entry.node)?,
        None => Strategy::Rolling,
    };
    let max_unavailable = match table.get("max_unavailable") {
        Some(entry) => max_unavailable(r, &entry.node)?,
        None => DEFAULT_MAX_UNAVAILABLE,
    };
    let release_command_timeout = match table.get("release_command_timeout") {
        Some(entry) if matches!(&entry.node.value, Value::String(s) if s.trim().eq_ignore_ascii_case("none")) => None,
        Some(entry) => Some(deploy_timeout(r, entry)?.unwrap_or(DEFAULT_RELEASE_COMMAND_TIMEOUT)),
        None => Some(DEFAULT_RELEASE_COMMAND_TIMEOUT),
    };
    let wait_timeout = match table.get("wait_timeout") {
        Some(entry) => deploy_timeout(r, entry)?.unwrap_or(DEFAULT_WAIT_TIMEOUT),
        None => DEFAULT_WAIT_TIMEOUT,
    };
    Ok(DeployConfig {
        release_command: r.opt_string(table, "deploy", "release_command")?,
        release_command_timeout,
        strategy,
        max_unavailable,
        wait_timeout,
    })
}

/// flyctl would read a bare number here as nanoseconds, which no one means; ferry reads
/// seconds, like `kill_timeout`, and says so.
fn deploy_timeout(r: &mut Reader<'_>, entry: &Entry) -> Result<Option<Duration>, ConfigError> {
    let path = join("deploy", &entry.key);
    let duration = r.duration(&entry.node, &path, Unit::Secs)?;
    if let (Value::Integer(n), Some(d)) = (&entry.node.value, duration) {
        let readable = humantime::format_duration(d);
        r.warn(
            &entry.node.span,
            format!("`{path}` = {n} is read as seconds (`{readable}`); write \"{readable}\" to say so"),
        );
    }
    Ok(duration)
}

fn strategy(r: &Reader<'_>, node: &Node) -> Result<Strategy, ConfigError> {
    let written = r.string(node, "deploy.strategy")?;
    Ok(match written.trim().to_ascii_lowercase().as_str() {
        "" | "rolling" => Strategy::Rolling,
        "immediate" => Strategy::Immediate,
        "canary" => Strategy::Canary,
        "bluegreen" => Strategy::Bluegreen,
        _ => {
            return Err(r.invalid(
                &node.span,
                format!(
                    "unknown `deploy.strategy` `{written}`: expected `rolling`, `immediate`, `canary` or `bluegreen`"
                ),
            ))
        }
    })
}

/// Below 1 a fraction of a region's instances, from 1 up a number of instances.
fn max_unavailable(r: &Reader<'_>, node: &Node) -> Result<MaxUnavailable, ConfigError> {
    let invalid = || {
        r.invalid(
            &node.span,
            "`deploy.max_unavailable` must be a fraction between 0 and 1 (such as 0.5) or a whole number of instances (such as 2)",
        )
    };
    match node.value {
        Value::Integer(n) => u32::try_from(n).ok().filter(|n| *n >= 1).map(MaxUnavailable::Count).ok_or_else(invalid),
        Value::Float(f) if f > 0.0 && f < 1.0 => Ok(MaxUnavailable::Fraction(f)),
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // whole, and checked to fit
        Value::Float(f) if f >= 1.0 && f.fract() == 0.0 && f <= f64::from(u32::MAX) => {
            Ok(MaxUnavailable::Count(f as u32))
        }
        _ => Err(invalid()),
    }
}

/// `[env]` (or the legacy `[[env]]`); values that are not strings become their text.
pub(super) fn env(r: &Reader<'_>, root: &Table) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut env = BTreeMap::new();
    let Some(entry) = root.get("env") else { return Ok(env) };
    for (_, table) in r.tables(&entry.node, "env")? {
        for var in &table.entries {
            if !valid_env_name(&var.key) {
                return Err(r.invalid(
                    &var.key_span,
                    format!(
                        "`env` key `{}` is not a valid environment variable name: use letters, digits and `_`, not starting with a digit",
                        var.key
                    ),
                ));
            }
            env.insert(var.key.clone(), r.scalar_text(var, &join("env", &var.key))?);
        }
    }
    Ok(env)
}

pub(super) fn valid_env_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `[processes]` as name → command. The old `processes = []` means none, and flyctl's
/// `[[processes]]` with `name` and `command` is read too.
pub(super) fn processes(r: &Reader<'_>, root: &Table) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut processes = BTreeMap::new();
    let Some(entry) = root.get("processes") else { return Ok(processes) };
    match &entry.node.value {
        Value::Table(table) => {
            for process in &table.entries {
                if !process.key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')) {
                    return Err(r.invalid(
                        &process.key_span,
                        format!("process group name `{}` must be letters, digits, `-` and `_`", process.key),
                    ));
                }
                let command = r.string(&process.node, &join("processes", &process.key))?;
                processes.insert(process.key.clone(), command.to_string());
            }
        }
        Value::Array(items) => {
            for item in items {
                let table = r.table(item, "processes")?;
                if let Some(name) = r.opt_string(table, "processes", "name")? {
                    processes.insert(name, r.opt_string(table, "processes", "command")?.unwrap_or_default());
                }
            }
        }
        _ => return Err(r.invalid(&entry.node.span, format!("`processes` must be a table, not {}", entry.node.kind()))),
    }
    Ok(processes)
}

/// `[[restart]]` (or a single `[restart]`): `policy` and `retries` per process group.
pub(super) fn restart(r: &Reader<'_>, root: &Table) -> Result<Vec<RestartConfig>, ConfigError> {
    let Some(entry) = root.get("restart") else { return Ok(Vec::new()) };
    let mut restarts = Vec::new();
    for (span, table) in r.tables(&entry.node, "restart")? {
        let policy = r.opt_string(table, "restart", "policy")?.unwrap_or_else(|| "on-failure".into());
        let policy = match policy.to_ascii_lowercase().as_str() {
            "always" => "always",
            "on-failure" | "on-fail" | "on_failure" => "on-failure",
            "never" | "no" => "never",
            other => {
                return Err(r.invalid(
                    span,
                    format!("unknown `restart.policy` `{other}`: expected `always`, `on-failure` or `never`"),
                ))
            }
        };
        let retries = match table.get("retries") {
            Some(entry) => Some(r.count(&entry.node, "restart.retries", 0)?),
            None => None,
        };
        let processes = match table.get("processes") {
            Some(p) => r.strings(&p.node, "restart.processes")?,
            None => Vec::new(),
        };
        restarts.push(RestartConfig { policy: policy.to_string(), retries, processes });
    }
    Ok(restarts)
}

/// `[mount]` (legacy), `[mounts]` and `[[mounts]]`, in that order, like flyctl.
pub(super) fn mounts(r: &Reader<'_>, root: &Table) -> Result<Vec<Mount>, ConfigError> {
    let mut mounts = Vec::new();
    for key in ["mount", "mounts"] {
        let Some(entry) = root.get(key) else { continue };
        for (span, table) in r.tables(&entry.node, key)? {
            let required = |field: &str| {
                r.opt_string(table, key, field)?.ok_or_else(|| r.invalid(span, format!("`{key}` needs a `{field}`")))
            };
            let processes = match table.get("processes") {
                Some(p) => r.strings(&p.node, &join(key, "processes"))?,
                None => Vec::new(),
            };
            mounts.push(Mount { source: required("source")?, destination: required("destination")?, processes });
        }
    }
    Ok(mounts)
}

/// The port instances listen on: `[http_service]`'s, else the first `[[services]]`'.
/// Zero means unset, as in flyctl.
pub(super) fn internal_port(r: &Reader<'_>, root: &Table) -> Result<Option<u16>, ConfigError> {
    if let Some(entry) = root.get("http_service") {
        let table = r.table(&entry.node, "http_service")?;
        if let Some(port) = table.get("internal_port") {
            let port = r.port(&port.node, "http_service.internal_port")?;
            if port != 0 {
                return Ok(Some(port));
            }
        }
    }
    let Some(entry) = root.get("services") else { return Ok(None) };
    let Some((_, first)) = r.tables(&entry.node, "services")?.into_iter().next() else { return Ok(None) };
    service_port(r, first)
}

/// `[http_service]` (served on 80, and on 443 behind TLS, as Fly does) and every
/// `[[services]]` with its `[[services.ports]]`. A service without an internal port is
/// left out: nothing could be routed to it.
pub(super) fn services(r: &Reader<'_>, root: &Table) -> Result<Vec<Service>, ConfigError> {
    let mut services = Vec::new();
    if let Some(entry) = root.get("http_service") {
        let table = r.table(&entry.node, "http_service")?;
        let force_https = match table.get("force_https") {
            Some(f) => r.boolean(&f.node, "http_service.force_https")?,
            None => false,
        };
        if let Some(port) = table.get("internal_port") {
            let internal_port = r.port(&port.node, "http_service.internal_port")?;
            if internal_port != 0 {
                services.push(Service {
                    processes: processes_of(r, table, "http_service")?,
                    internal_port,
                    protocol: "tcp".into(),
                    ports: vec![
                        PublicPort { port: 80, handlers: vec!["http".into()], force_https },
                        PublicPort { port: 443, handlers: vec!["tls".into(), "http".into()], force_https: false },
                    ],
                });
            }
        }
    }
    let Some(entry) = root.get("services") else { return Ok(services) };
    for (_, service) in r.tables(&entry.node, "services")? {
        let Some(internal_port) = service_port(r, service)? else { continue };
        let protocol = r.opt_string(service, "services", "protocol")?.unwrap_or_else(|| "tcp".into());
        let mut ports = Vec::new();
        if let Some(list) = service.get("ports") {
            for (_, port) in r.tables(&list.node, "services.ports")? {
                let Some(number) = port.get("port") else { continue };
                let number = r.port(&number.node, "services.ports.port")?;
                let handlers = match port.get("handlers") {
                    Some(h) => r.strings(&h.node, "services.ports.handlers")?,
                    None => Vec::new(),
                };
                let force_https = match port.get("force_https") {
                    Some(f) => r.boolean(&f.node, "services.ports.force_https")?,
                    None => false,
                };
                ports.push(PublicPort {
                    port: number,
                    handlers: handlers.into_iter().map(|h| h.to_ascii_lowercase()).collect(),
                    force_https,
                });
            }
        }
        services.push(Service {
            internal_port,
            protocol: protocol.to_ascii_lowercase(),
            ports,
            processes: processes_of(r, service, "services")?,
        });
    }
    Ok(services)
}

/// A table's `processes`: the groups it applies to (empty: the default group).
fn processes_of(r: &Reader<'_>, table: &Table, prefix: &str) -> Result<Vec<String>, ConfigError> {
    match table.get("processes") {
        Some(entry) => Ok(r.strings(&entry.node, &join(prefix, "processes"))?),
        None => Ok(Vec::new()),
    }
}

fn service_port(r: &Reader<'_>, service: &Table) -> Result<Option<u16>, ConfigError> {
    let Some(entry) = service.get("internal_port") else { return Ok(None) };
    Ok(Some(r.port(&entry.node, "services.internal_port")?).filter(|p| *p != 0))
}

/// Every health check, in file order: `[[http_service.checks]]`, each service's
/// `tcp_checks` and `http_checks`, and `[checks.NAME]`. Service checks run against their
/// service's `internal_port`, so that is their `port`.
pub(super) fn checks(r: &mut Reader<'_>, root: &Table) -> Result<Vec<Check>, ConfigError> {
    let mut found: Vec<(usize, Check)> = Vec::new();
    if let Some(entry) = root.get("http_service") {
        let service = r.table(&entry.node, "http_service")?;
        let port = match service.get("internal_port") {
            Some(p) => Some(r.port(&p.node, "http_service.internal_port")?).filter(|p| *p != 0),
            None => None,
        };
        let processes = processes_of(r, service, "http_service")?;
        if let Some(list) = service.get("checks") {
            for (i, (span, table)) in r.tables(&list.node, "http_service.checks")?.into_iter().enumerate() {
                let mut check =
                    service_check(r, table, "http_service.checks", format!("http_service.checks[{i}]"), port, true)?;
                check.processes.clone_from(&processes);
                found.push((span.start, check));
            }
        }
    }
    if let Some(entry) = root.get("services") {
        for (s, (_, service)) in r.tables(&entry.node, "services")?.into_iter().enumerate() {
            let port = service_port(r, service)?;
            let processes = processes_of(r, service, "services")?;
            for (key, http) in [("tcp_checks", false), ("http_checks", true)] {
                let Some(list) = service.get(key) else { continue };
                let path = join("services", key);
                for (i, (span, table)) in r.tables(&list.node, &path)?.into_iter().enumerate() {
                    let mut check = service_check(r, table, &path, format!("services[{s}].{key}[{i}]"), port, http)?;
                    check.processes.clone_from(&processes);
                    found.push((span.start, check));
                }
            }
        }
    }
    if let Some(entry) = root.get("checks") {
        let served = internal_port(r, root)?.is_some();
        let mut portless = Vec::new();
        for (span, name, table) in top_level_checks(r, &entry.node)? {
            let check = top_level_check(r, &name, span, table)?;
            if check.port.is_none() && !served {
                portless.push((span.clone(), name));
            }
            found.push((span.start, check));
        }
        for (span, name) in portless {
            r.warn_at_deploy(
                &span,
                format!(
                    "check `{name}` has no `port` and the app has no service: ferry runs it against each instance's $PORT"
                ),
            );
        }
    }
    found.sort_by_key(|(offset, _)| *offset);
    Ok(found.into_iter().map(|(_, check)| check).collect())
}

/// `[checks.NAME]` tables, or flyctl's legacy `[[checks]]` with a `name` each.
fn top_level_checks<'n>(r: &Reader<'_>, node: &'n Node) -> Result<Vec<(&'n Span, String, &'n Table)>, ConfigError> {
    match &node.value {
        Value::Table(table) => table
            .entries
            .iter()
            .map(|entry| Ok((&entry.node.span, entry.key.clone(), r.table(&entry.node, &join("checks", &entry.key))?)))
            .collect(),
        Value::Array(_) => r
            .tables(node, "checks")?
            .into_iter()
            .map(|(span, table)| {
                let name = r
                    .opt_string(table, "checks", "name")?
                    .ok_or_else(|| r.invalid(span, "`[[checks]]` needs a `name`"))?;
                Ok((span, name, table))
            })
            .collect(),
        _ => Err(r.invalid(&node.span, format!("`checks` must be a table, not {}", node.kind()))),
    }
}

fn top_level_check(r: &Reader<'_>, name: &str, span: &Span, table: &Table) -> Result<Check, ConfigError> {
    let prefix = join("checks", name);
    let kind = r.opt_string(table, &prefix, "type")?.map(|t| t.to_ascii_lowercase());
    let http = match kind.as_deref() {
        Some("http") => true,
        Some("tcp") => false,
        _ => {
            let span = table.get("type").map_or(span, |e| &e.node.span);
            return Err(r.invalid(span, format!("`{prefix}.type` must be \"http\" or \"tcp\"")));
        }
    };
    let port = match table.get("port") {
        Some(entry) => Some(r.port(&entry.node, &join(&prefix, "port"))?),
        None => None,
    };
    let mut check = service_check(r, table, &prefix, name.to_string(), port, http)?;
    check.processes = processes_of(r, table, &prefix)?;
    Ok(check)
}

fn service_check(
    r: &Reader<'_>,
    table: &Table,
    prefix: &str,
    name: String,
    port: Option<u16>,
    http: bool,
) -> Result<Check, ConfigError> {
    let duration = |key: &str, default: Duration| -> Result<Duration, ConfigError> {
        match table.get(key) {
            Some(entry) => Ok(r.duration(&entry.node, &join(prefix, key), Unit::Millis)?.unwrap_or(default)),
            None => Ok(default),
        }
    };
    let kind = if http { http_kind(r, table, prefix)? } else { CheckKind::Tcp };
    Ok(Check {
        name,
        kind,
        port,
        grace_period: duration("grace_period", DEFAULT_CHECK_GRACE_PERIOD)?,
        interval: duration("interval", DEFAULT_CHECK_INTERVAL)?,
        timeout: duration("timeout", DEFAULT_CHECK_TIMEOUT)?,
        processes: Vec::new(),
    })
}

fn http_kind(r: &Reader<'_>, table: &Table, prefix: &str) -> Result<CheckKind, ConfigError> {
    let tls = match table.get("protocol") {
        None => false,
        Some(entry) => match r.string(&entry.node, &join(prefix, "protocol"))?.trim().to_ascii_lowercase().as_str() {
            "" | "http" => false,
            "https" => true,
            other => {
                return Err(r.invalid(
                    &entry.node.span,
                    format!("`{prefix}.protocol` must be \"http\" or \"https\", not `{other}`"),
                ))
            }
        },
    };
    Ok(CheckKind::Http {
        method: r.opt_string(table, prefix, "method")?.map_or_else(|| "GET".to_string(), |m| m.to_ascii_uppercase()),
        path: r.opt_string(table, prefix, "path")?.unwrap_or_else(|| "/".to_string()),
        headers: headers(r, table, prefix)?,
        tls,
    })
}

/// `headers` as a table (values that are not strings become their text), `[]` for none
/// (old flyctl output), or flyctl's list of `{ name, value }`.
fn headers(r: &Reader<'_>, table: &Table, prefix: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut headers = BTreeMap::new();
    let Some(entry) = table.get("headers") else { return Ok(headers) };
    let path = join(prefix, "headers");
    match &entry.node.value {
        Value::Table(map) => {
            for header in &map.entries {
                headers.insert(header.key.clone(), r.scalar_text(header, &join(&path, &header.key))?);
            }
        }
        Value::Array(_) => {
            for (span, item) in r.tables(&entry.node, &path)? {
                let name = r
                    .opt_string(item, &path, "name")?
                    .ok_or_else(|| r.invalid(span, format!("`{path}` entries need a `name`")))?;
                headers.insert(name, r.opt_string(item, &path, "value")?.unwrap_or_default());
            }
        }
        _ => return Err(r.invalid(&entry.node.span, format!("`{path}` must be a table, not {}", entry.node.kind()))),
    }
    Ok(headers)
}

/// Ports are not used by ferry, but a port that cannot exist is a mistake worth stopping for.
pub(super) fn validate_service_ports(r: &Reader<'_>, root: &Table) -> Result<(), ConfigError> {
    let Some(entry) = root.get("services") else { return Ok(()) };
    for (_, service) in r.tables(&entry.node, "services")? {
        let Some(ports) = service.get("ports") else { continue };
        for (_, port) in r.tables(&ports.node, "services.ports")? {
            for key in ["port", "start_port", "end_port"] {
                if let Some(value) = port.get(key) {
                    r.port(&value.node, &join("services.ports", key))?;
                }
            }
        }
    }
    Ok(())
}

pub(super) fn backticked(items: &[&str]) -> String {
    items.iter().map(|item| format!("`{item}`")).collect::<Vec<_>>().join(", ")
}

/// One warning per `processes = [...]` entry (and `counts` key) that names a group
/// `[processes]` does not define: it applies to nothing, which is rarely meant.
pub(super) fn warn_unknown_groups(r: &mut Reader<'_>, root: &Table, groups: &[String]) {
    let mut spans: Vec<(Span, String)> = Vec::new();
    let mut collect = |table: &Table| {
        let Some(entry) = table.get("processes") else { return };
        if let Value::Array(items) = &entry.node.value {
            for item in items {
                if let Value::String(name) = &item.value {
                    spans.push((item.span.clone(), name.clone()));
                }
            }
        }
    };
    let tables_of = |key: &str| -> Vec<&Table> {
        let Some(entry) = root.get(key) else { return Vec::new() };
        match &entry.node.value {
            Value::Table(t) if key == "checks" => t.entries.iter().filter_map(|e| e.node.as_table()).collect(),
            Value::Table(t) => vec![t],
            Value::Array(items) => items.iter().filter_map(Node::as_table).collect(),
            _ => Vec::new(),
        }
    };
    for key in ["http_service", "services", "checks", "mount", "mounts", "restart"] {
        for table in tables_of(key) {
            collect(table);
        }
    }
    let regions = root
        .get("ferry")
        .and_then(|f| f.node.as_table())
        .and_then(|f| f.get("regions"))
        .and_then(|r| r.node.as_table());
    for region in regions.iter().flat_map(|r| r.entries.iter()).filter_map(|e| e.node.as_table()) {
        let counts = region.get("counts").and_then(|c| c.node.as_table());
        for entry in counts.iter().flat_map(|c| c.entries.iter()) {
            spans.push((entry.key_span.clone(), entry.key.clone()));
        }
    }
    let known: Vec<&str> = groups.iter().map(String::as_str).collect();
    for (span, name) in spans {
        if !groups.contains(&name) {
            r.warn(&span, format!("process group `{name}` is not in `[processes]` (groups: {})", backticked(&known)));
        }
    }
}
