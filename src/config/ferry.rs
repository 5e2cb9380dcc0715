//! ferry's own `[ferry]` section: where instances run (`target`, `[ferry.regions.NAME]`),
//! how releases are built and kept, and pre-migration backups. Owns its defaults and
//! validation; must not read Fly's keys.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::fly::valid_env_name;
use super::read::{join, Reader, Unit};
use super::tree::{Node, Table, Value};
use super::{
    BackupConfig, BackupRun, BuildConfig, CanaryConfig, ConfigError, FerryConfig, ProxyConfig, RegionConfig, Target,
};

pub(super) const DEFAULT_ROOT: &str = "~/ferry";
pub(super) const DEFAULT_KEEP_RELEASES: usize = 5;
/// Fewer than two would prune the release a rollback needs.
const MIN_KEEP_RELEASES: i64 = 2;
pub(super) const DEFAULT_REPLICA_WAIT_TIMEOUT: Duration = Duration::from_mins(2);
/// How long a new instance must stay up after passing its checks. One second catches
/// a release that crashes about a second after it starts; the windows of a rollout's
/// instances overlap (the next batch does not wait for the last one's), so a deploy
/// waits about one window in all, not one per batch.
pub(super) const DEFAULT_MIN_HEALTHY_TIME: Duration = Duration::from_secs(1);
pub(super) const DEFAULT_DATABASE_URL_ENV: &str = "DATABASE_URL";
pub(super) const DEFAULT_CANARY_WEIGHT: u8 = 10;
pub(super) const DEFAULT_CANARY_MAX_ERRORS: u8 = 5;
pub(super) const DEFAULT_BACKUP_KEEP: usize = 10;

pub(super) fn resolve(r: &Reader<'_>, root: &Table, dir: &Path) -> Result<FerryConfig, ConfigError> {
    let empty = Table::default();
    let ferry = section(r, root, "ferry", "", &empty)?;
    Ok(FerryConfig {
        target: match ferry.get("target") {
            Some(entry) => target(r, &entry.node)?,
            None => Target::Local,
        },
        root: r.opt_string(ferry, "ferry", "root")?.unwrap_or_else(|| DEFAULT_ROOT.to_string()),
        keep_releases: match ferry.get("keep_releases") {
            Some(entry) => r.count(&entry.node, "ferry.keep_releases", MIN_KEEP_RELEASES)?,
            None => DEFAULT_KEEP_RELEASES,
        },
        replica_wait_timeout: match ferry.get("replica_wait_timeout") {
            Some(entry) => r
                .duration(&entry.node, "ferry.replica_wait_timeout", Unit::Secs)?
                .unwrap_or(DEFAULT_REPLICA_WAIT_TIMEOUT),
            None => DEFAULT_REPLICA_WAIT_TIMEOUT,
        },
        min_healthy_time: {
            let deploy = section(r, ferry, "deploy", "ferry", &empty)?;
            match deploy.get("min_healthy_time") {
                Some(entry) => r
                    .duration(&entry.node, "ferry.deploy.min_healthy_time", Unit::Secs)?
                    .unwrap_or(DEFAULT_MIN_HEALTHY_TIME),
                None => DEFAULT_MIN_HEALTHY_TIME,
            }
        },
        canary: canary(r, section(r, ferry, "deploy", "ferry", &empty)?)?,
        primary_last: match ferry.get("primary_last") {
            Some(entry) => r.boolean(&entry.node, "ferry.primary_last")?,
            None => false,
        },
        build: build(r, section(r, ferry, "build", "ferry", &empty)?, dir)?,
        regions: regions(r, section(r, ferry, "regions", "ferry", &empty)?)?,
        backup: backup(r, section(r, ferry, "backup", "ferry", &empty)?)?,
        proxy: proxy(r, section(r, ferry, "proxy", "ferry", &empty)?)?,
    })
}

fn canary(r: &Reader<'_>, deploy: &Table) -> Result<CanaryConfig, ConfigError> {
    let percent = |key: &str, default: u8, min: i64| -> Result<u8, ConfigError> {
        let Some(entry) = deploy.get(key) else { return Ok(default) };
        let path = join("ferry.deploy", key);
        let n: u32 = r.count(&entry.node, &path, min)?;
        u8::try_from(n)
            .ok()
            .filter(|n| *n <= 100)
            .ok_or_else(|| r.invalid(&entry.node.span, format!("`{path}` is a percentage (at most 100), not `{n}`")))
    };
    Ok(CanaryConfig {
        time: match deploy.get("canary_time") {
            Some(entry) => r.duration(&entry.node, "ferry.deploy.canary_time", Unit::Secs)?.unwrap_or_default(),
            None => Duration::ZERO,
        },
        weight: percent("canary_weight", DEFAULT_CANARY_WEIGHT, 1)?,
        max_errors: percent("canary_max_errors", DEFAULT_CANARY_MAX_ERRORS, 0)?,
    })
}

fn proxy(r: &Reader<'_>, table: &Table) -> Result<ProxyConfig, ConfigError> {
    let bind = r.opt_string(table, "ferry.proxy", "bind")?;
    if let (Some(bind), Some(entry)) = (&bind, table.get("bind")) {
        if bind != "host" && bind.parse::<std::net::IpAddr>().is_err() {
            return Err(r.invalid(
                &entry.node.span,
                format!("`ferry.proxy.bind` must be an IP address or `host`, not `{bind}`"),
            ));
        }
    }
    let hosts = match table.get("hosts") {
        Some(entry) => r.strings(&entry.node, "ferry.proxy.hosts")?,
        None => Vec::new(),
    };
    let mut ports = BTreeMap::new();
    if let Some(entry) = table.get("ports") {
        for port in &r.table(&entry.node, "ferry.proxy.ports")?.entries {
            let path = join("ferry.proxy.ports", &port.key);
            let public = port.key.trim().parse::<u16>().map_err(|_| {
                r.invalid(&port.key_span, format!("`{path}`: `{}` is not a port (0 to 65535)", port.key))
            })?;
            ports.insert(public, r.port(&port.node, &path)?);
        }
    }
    let cert = r.opt_string(table, "ferry.proxy", "tls_cert")?;
    let key = r.opt_string(table, "ferry.proxy", "tls_key")?;
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            let (given, missing) =
                if table.get("tls_cert").is_some() { ("tls_cert", "tls_key") } else { ("tls_key", "tls_cert") };
            let span = &table.get(given).map(|e| e.node.span.clone()).unwrap_or_default();
            return Err(r.invalid(span, format!("`ferry.proxy.{given}` needs `ferry.proxy.{missing}` beside it")));
        }
    };
    Ok(ProxyConfig {
        tls,
        enabled: match table.get("enabled") {
            Some(entry) => r.boolean(&entry.node, "ferry.proxy.enabled")?,
            None => true,
        },
        bind,
        hosts: hosts.into_iter().map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect(),
        ports,
    })
}

fn section<'t>(
    r: &Reader<'_>,
    table: &'t Table,
    key: &str,
    prefix: &str,
    empty: &'t Table,
) -> Result<&'t Table, ConfigError> {
    match table.get(key) {
        Some(entry) => r.table(&entry.node, &join(prefix, key)),
        None => Ok(empty),
    }
}

fn target(r: &Reader<'_>, node: &Node) -> Result<Target, ConfigError> {
    match r.string(node, "ferry.target")?.trim() {
        "local" => Ok(Target::Local),
        "ssh" => Ok(Target::Ssh),
        other => Err(r.invalid(&node.span, format!("unknown `ferry.target` `{other}`: expected `local` or `ssh`"))),
    }
}

fn build(r: &Reader<'_>, table: &Table, dir: &Path) -> Result<BuildConfig, ConfigError> {
    let path = r.opt_string(table, "ferry.build", "path")?.unwrap_or_else(|| ".".to_string());
    Ok(BuildConfig {
        command: r.opt_string(table, "ferry.build", "command")?,
        path: without_dots(&dir.join(path)),
        start: r.opt_string(table, "ferry.build", "start")?,
    })
}

/// Drops `.` components so `dir/./x` reads as `dir/x`; `..` is kept, as resolving it
/// would need the file system.
pub(super) fn without_dots(path: &Path) -> PathBuf {
    path.components().filter(|c| !matches!(c, Component::CurDir)).collect()
}

fn regions(r: &Reader<'_>, table: &Table) -> Result<BTreeMap<String, RegionConfig>, ConfigError> {
    let mut regions = BTreeMap::new();
    for entry in &table.entries {
        if !valid_region_name(&entry.key) {
            return Err(r.invalid(
                &entry.key_span,
                format!(
                    "region name `{}` must be lowercase letters, digits and `-`, starting with a letter or digit",
                    entry.key
                ),
            ));
        }
        let prefix = join("ferry.regions", &entry.key);
        let region = r.table(&entry.node, &prefix)?;
        let hosts = match region.get("hosts") {
            Some(hosts) => ssh_hosts(r, &hosts.node, &join(&prefix, "hosts"))?,
            None => Vec::new(),
        };
        let replica_url_env = r.opt_string(region, &prefix, "replica_url_env")?;
        if let (Some(name), Some(entry)) = (&replica_url_env, region.get("replica_url_env")) {
            env_name(r, name, &entry.node, &join(&prefix, "replica_url_env"))?;
        }
        let config = RegionConfig {
            hosts,
            count: match region.get("count") {
                Some(count) => r.count(&count.node, &join(&prefix, "count"), 0)?,
                None => 1,
            },
            counts: match region.get("counts") {
                Some(counts) => group_counts(r, &counts.node, &join(&prefix, "counts"))?,
                None => BTreeMap::new(),
            },
            replica_url_env,
            replica_url: r.opt_string(region, &prefix, "replica_url")?,
        };
        regions.insert(entry.key.clone(), config);
    }
    Ok(regions)
}

/// `counts = { worker = 2 }`: instances per process group.
fn group_counts(r: &Reader<'_>, node: &Node, path: &str) -> Result<BTreeMap<String, u32>, ConfigError> {
    let mut counts = BTreeMap::new();
    for entry in &r.table(node, path)?.entries {
        counts.insert(entry.key.clone(), r.count(&entry.node, &join(path, &entry.key), 0)?);
    }
    Ok(counts)
}

/// Region names become directory names and environment values: `[a-z0-9][a-z0-9-]*`.
pub(super) fn valid_region_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn ssh_hosts(r: &Reader<'_>, node: &Node, path: &str) -> Result<Vec<String>, ConfigError> {
    let Value::Array(items) = &node.value else {
        return Err(r.invalid(&node.span, format!("`{path}` must be an array of strings")));
    };
    items
        .iter()
        .map(|item| {
            let host = r.string(item, path)?.trim();
            if valid_ssh_host(host) {
                Ok(host.to_string())
            } else {
                Err(r.invalid(
                    &item.span,
                    format!("`{path}` entry `{host}` must look like `user@host` or `user@host:port`"),
                ))
            }
        })
        .collect()
}

/// `user@host`, `user@host:port`, or a bare `host` / `host:port` that `~/.ssh/config`
/// completes; `[::1]` style addresses may carry a port too. Rejects anything that could be
/// read as an ssh option or that holds spaces.
fn valid_ssh_host(text: &str) -> bool {
    let (user, rest) = match text.split_once('@') {
        Some((user, rest)) => (Some(user), rest),
        None => (None, text),
    };
    if user.is_some_and(|u| u.is_empty() || u.contains(|c: char| c.is_whitespace() || c == ':')) {
        return false;
    }
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        match bracketed.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, port)) => match port.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return false,
            },
            None => return false,
        }
    } else {
        match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    let host_ok = !host.is_empty()
        && !host.starts_with('-')
        && !host.contains(|c: char| c.is_whitespace() || c == '@' || c == '/');
    host_ok && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

fn env_name(r: &Reader<'_>, name: &str, node: &Node, path: &str) -> Result<(), ConfigError> {
    if valid_env_name(name) {
        Ok(())
    } else {
        Err(r.invalid(&node.span, format!("`{path}` `{name}` is not a valid environment variable name")))
    }
}

fn backup(r: &Reader<'_>, table: &Table) -> Result<BackupConfig, ConfigError> {
    let database_url_env = r
        .opt_string(table, "ferry.backup", "database_url_env")?
        .unwrap_or_else(|| DEFAULT_DATABASE_URL_ENV.to_string());
    if let Some(entry) = table.get("database_url_env") {
        env_name(r, &database_url_env, &entry.node, "ferry.backup.database_url_env")?;
    }
    Ok(BackupConfig {
        before_migrate: match table.get("before_migrate") {
            Some(entry) => r.boolean(&entry.node, "ferry.backup.before_migrate")?,
            None => false,
        },
        database_url_env,
        run: match table.get("run") {
            Some(entry) => match r.string(&entry.node, "ferry.backup.run")?.trim() {
                "host" => BackupRun::Host,
                "local" => BackupRun::Local,
                other => {
                    return Err(r.invalid(
                        &entry.node.span,
                        format!("unknown `ferry.backup.run` `{other}`: expected `host` or `local`"),
                    ))
                }
            },
            None => BackupRun::Host,
        },
        keep: match table.get("keep") {
            Some(entry) => r.count(&entry.node, "ferry.backup.keep", 1)?,
            None => DEFAULT_BACKUP_KEEP,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_hosts_are_user_at_host_with_an_optional_port() {
        for good in ["deploy@syd1.example.com", "deploy@syd1:2222", "syd1", "deploy@[::1]:22", "deploy@10.0.0.1"] {
            assert!(valid_ssh_host(good), "{good}");
        }
        for bad in
            ["", "@host", "deploy@", "deploy@host:0", "deploy@host:ssh", "-oProxyCommand=x", "a b@c", "deploy@[::1"]
        {
            assert!(!valid_ssh_host(bad), "{bad}");
        }
    }

    #[test]
    fn region_names_are_lowercase_words() {
        assert!(valid_region_name("syd"));
        assert!(valid_region_name("us-east-1"));
        assert!(!valid_region_name("Syd"));
        assert!(!valid_region_name("-syd"));
        assert!(!valid_region_name("s_y"));
        assert!(!valid_region_name(""));
    }

    #[test]
    fn build_path_is_resolved_against_the_config_dir() {
        assert_eq!(without_dots(&Path::new("/app").join(".")), PathBuf::from("/app"));
        assert_eq!(without_dots(&Path::new("/app").join("./_build/rel")), PathBuf::from("/app/_build/rel"));
    }
}
