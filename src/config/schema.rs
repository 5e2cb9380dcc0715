//! Which keys a `fly.toml` may hold: Fly's own (as flyctl's app config defines them,
//! including legacy Nomad-era keys flyctl still accepts) and ferry's `[ferry]` section.
//! Owns the allow-list and the walk that warns once per unknown key, at the key, with a
//! suggestion for near misses. It never fails a load and never reads values.

use super::read::{join, Reader};
use super::tree::{Node, Table, Value};

/// The expected shape under a key.
pub(super) enum Shape {
    /// Any value; not looked into (`[env]`, `[build.args]`, header maps, scalars).
    Any,
    /// A table, or an array of tables, with these keys.
    Table(&'static [(&'static str, Shape)]),
    /// A table of user-chosen names (`[checks.NAME]`, `[ferry.regions.NAME]`), each of this shape.
    Map(&'static Shape),
}

use Shape::{Any, Map, Table as T};

const CONCURRENCY: &[(&str, Shape)] = &[("type", Any), ("hard_limit", Any), ("soft_limit", Any)];
const TLS_OPTIONS: &[(&str, Shape)] = &[("alpn", Any), ("versions", Any), ("default_self_signed", Any)];
const PROXY_PROTO_OPTIONS: &[(&str, Shape)] = &[("version", Any)];
const REPLAY_CACHE: &[(&str, Shape)] =
    &[("path_prefix", Any), ("ttl_seconds", Any), ("type", Any), ("name", Any), ("allow_bypass", Any)];
const HTTP_OPTIONS: &[(&str, Shape)] = &[
    ("compress", Any),
    ("response", T(&[("headers", Any), ("pristine", Any)])),
    ("h2_backend", Any),
    ("idle_timeout", Any),
    ("headers_read_timeout", Any),
    ("replay_cache", T(REPLAY_CACHE)),
];
const TCP_CHECK: &[(&str, Shape)] =
    &[("interval", Any), ("timeout", Any), ("grace_period", Any), ("restart_limit", Any)];
const HTTP_CHECK: &[(&str, Shape)] = &[
    ("interval", Any),
    ("timeout", Any),
    ("grace_period", Any),
    ("restart_limit", Any),
    ("method", Any),
    ("path", Any),
    ("protocol", Any),
    ("tls_skip_verify", Any),
    ("tls_server_name", Any),
    ("headers", Any),
];
const TOP_CHECK: &[(&str, Shape)] = &[
    ("name", Any),
    ("type", Any),
    ("kind", Any),
    ("port", Any),
    ("processes", Any),
    ("interval", Any),
    ("timeout", Any),
    ("grace_period", Any),
    ("restart_limit", Any),
    ("method", Any),
    ("path", Any),
    ("protocol", Any),
    ("tls_skip_verify", Any),
    ("tls_server_name", Any),
    ("headers", Any),
];
const MACHINE_CHECK: &[(&str, Shape)] =
    &[("command", Any), ("image", Any), ("entrypoint", Any), ("kill_signal", Any), ("kill_timeout", Any)];
const PORT: &[(&str, Shape)] = &[
    ("port", Any),
    ("start_port", Any),
    ("end_port", Any),
    ("handlers", Any),
    ("force_https", Any),
    ("tls_options", T(TLS_OPTIONS)),
    ("http_options", T(HTTP_OPTIONS)),
    ("proxy_proto_options", T(PROXY_PROTO_OPTIONS)),
];
const SERVICE: &[(&str, Shape)] = &[
    ("protocol", Any),
    ("internal_port", Any),
    ("auto_stop_machines", Any),
    ("auto_start_machines", Any),
    ("min_machines_running", Any),
    ("processes", Any),
    ("ports", T(PORT)),
    ("concurrency", T(CONCURRENCY)),
    ("tcp_checks", T(TCP_CHECK)),
    ("http_checks", T(HTTP_CHECK)),
    ("machine_checks", T(MACHINE_CHECK)),
    ("script_checks", Any),
];
const HTTP_SERVICE: &[(&str, Shape)] = &[
    ("internal_port", Any),
    ("force_https", Any),
    ("auto_stop_machines", Any),
    ("auto_start_machines", Any),
    ("min_machines_running", Any),
    ("processes", Any),
    ("concurrency", T(CONCURRENCY)),
    ("tls_options", T(TLS_OPTIONS)),
    ("http_options", T(HTTP_OPTIONS)),
    ("proxy_proto_options", T(PROXY_PROTO_OPTIONS)),
    ("checks", T(HTTP_CHECK)),
    ("machine_checks", T(MACHINE_CHECK)),
];
const COMPUTE: &[(&str, Shape)] = &[
    ("size", Any),
    ("memory", Any),
    ("memory_mb", Any),
    ("max_memory_mb", Any),
    ("cpus", Any),
    ("cpu_kind", Any),
    ("gpus", Any),
    ("gpu_kind", Any),
    ("host_dedication_id", Any),
    ("persist_rootfs", Any),
    ("kernel_args", Any),
    ("processes", Any),
];
const MOUNT: &[(&str, Shape)] = &[
    ("source", Any),
    ("destination", Any),
    ("processes", Any),
    ("initial_size", Any),
    ("snapshot_retention", Any),
    ("scheduled_snapshots", Any),
    ("auto_extend_size_threshold", Any),
    ("auto_extend_size_increment", Any),
    ("auto_extend_size_limit", Any),
];
const BUILD: &[(&str, Shape)] = &[
    ("builder", Any),
    ("buildpacks", Any),
    ("args", Any),
    ("settings", Any),
    ("image", Any),
    ("builtin", Any),
    ("dockerfile", Any),
    ("ignorefile", Any),
    ("build-target", Any),
    ("build_target", Any),
];
const DEPLOY: &[(&str, Shape)] = &[
    ("strategy", Any),
    ("max_unavailable", Any),
    ("wait_timeout", Any),
    ("release_command", Any),
    ("release_command_timeout", Any),
    ("release_command_vm", T(COMPUTE)),
    ("seed_command", Any),
];
/// Includes the Nomad-era keys flyctl generated or still migrates.
const EXPERIMENTAL: &[(&str, Shape)] = &[
    ("cmd", Any),
    ("entrypoint", Any),
    ("exec", Any),
    ("auto_rollback", Any),
    ("enable_consul", Any),
    ("enable_etcd", Any),
    ("lazy_load_images", Any),
    ("attached", Any),
    ("machine_config", Any),
    ("use_zstd", Any),
    ("kill_timeout", Any),
    ("metrics_port", Any),
    ("metrics_path", Any),
    ("allowed_public_ports", Any),
    ("private_network", Any),
];
const FERRY: &[(&str, Shape)] = &[
    ("target", Any),
    ("root", Any),
    ("keep_releases", Any),
    ("replica_wait_timeout", Any),
    ("primary_last", Any),
    (
        "deploy",
        T(&[("min_healthy_time", Any), ("canary_time", Any), ("canary_weight", Any), ("canary_max_errors", Any)]),
    ),
    ("build", T(&[("command", Any), ("path", Any), ("start", Any)])),
    (
        "regions",
        Map(&T(&[("hosts", Any), ("count", Any), ("counts", Any), ("replica_url_env", Any), ("replica_url", Any)])),
    ),
    ("backup", T(&[("before_migrate", Any), ("database_url_env", Any), ("run", Any), ("keep", Any)])),
    (
        "proxy",
        T(&[("enabled", Any), ("bind", Any), ("hosts", Any), ("ports", Any), ("tls_cert", Any), ("tls_key", Any)]),
    ),
];

pub(super) const ROOT: &[(&str, Shape)] = &[
    ("app", Any),
    ("primary_region", Any),
    ("kill_signal", Any),
    ("kill_timeout", Any),
    ("swap_size_mb", Any),
    ("console_command", Any),
    ("host_dedication_id", Any),
    ("machine_config", Any),
    ("container", Any),
    ("experimental", T(EXPERIMENTAL)),
    ("build", T(BUILD)),
    ("deploy", T(DEPLOY)),
    ("env", Any),
    ("processes", Any),
    ("mounts", T(MOUNT)),
    ("mount", T(MOUNT)),
    ("http_service", T(HTTP_SERVICE)),
    ("services", T(SERVICE)),
    ("checks", Map(&T(TOP_CHECK))),
    ("machine_checks", T(MACHINE_CHECK)),
    (
        "files",
        T(&[("guest_path", Any), ("local_path", Any), ("secret_name", Any), ("raw_value", Any), ("processes", Any)]),
    ),
    ("restart", T(&[("policy", Any), ("retries", Any), ("processes", Any)])),
    ("vm", T(COMPUTE)),
    ("compute", T(COMPUTE)),
    ("computes", T(COMPUTE)),
    ("statics", T(&[("guest_path", Any), ("url_prefix", Any), ("tigris_bucket", Any), ("index_document", Any)])),
    ("metrics", T(&[("port", Any), ("path", Any), ("https", Any), ("processes", Any)])),
    ("metric", T(&[("port", Any), ("path", Any), ("https", Any), ("processes", Any)])),
    ("ferry", T(FERRY)),
];

/// Warns once for every key that is not in `shape`, at the key.
pub(super) fn warn_unknown(reader: &mut Reader<'_>, table: &Table, shape: &[(&str, Shape)], path: &str) {
    for entry in &table.entries {
        let key_path = join(path, &display_key(&entry.key));
        if let Some((_, inner)) = shape.iter().find(|(name, _)| *name == entry.key) {
            walk(reader, &entry.node, inner, &key_path);
            continue;
        }
        let message = match suggestion(&entry.key, shape) {
            Some(near) => format!("unknown key `{key_path}`; did you mean `{}`?", join(path, near)),
            None => format!("unknown key `{key_path}`"),
        };
        reader.warn(&entry.key_span, message);
    }
}

fn walk(reader: &mut Reader<'_>, node: &Node, shape: &Shape, path: &str) {
    match (shape, &node.value) {
        (T(keys), Value::Table(table)) => warn_unknown(reader, table, keys, path),
        (Map(inner), Value::Table(table)) => {
            for entry in &table.entries {
                walk(reader, &entry.node, inner, &join(path, &display_key(&entry.key)));
            }
        }
        // `[[x]]` arrays: each table has the shape (for a map, legacy `[[checks]]` with `name`).
        (T(_), Value::Array(items)) => items.iter().for_each(|item| walk(reader, item, shape, path)),
        (Map(inner), Value::Array(items)) => items.iter().for_each(|item| walk(reader, item, inner, path)),
        // `Any` is not looked into. A wrong type for a key ferry reads is reported where it
        // is read; for the others it is Fly's business.
        _ => {}
    }
}

/// Keys that are not bare TOML keys are quoted so the path stays unambiguous.
fn display_key(key: &str) -> String {
    if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

/// The known key a misspelling most likely meant: the same words in another order or
/// number (`auto_machine_start`, `min_machine_running`), or one word off by a typo
/// (`tarjet`). A different word (`max_` for `min_`) is not a typo.
fn suggestion<'s>(key: &str, shape: &'s [(&'s str, Shape)]) -> Option<&'s str> {
    shape
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| near(key, name))
        .min_by_key(|name| edit_distance(&key.to_ascii_lowercase(), name))
}

fn near(key: &str, name: &str) -> bool {
    let words = |k: &str| -> Vec<String> {
        k.split(['_', '-']).map(|w| w.to_ascii_lowercase().trim_end_matches('s').to_string()).collect()
    };
    let (typed, known) = (words(key), words(name));
    let (mut typed_sorted, mut known_sorted) = (typed.clone(), known.clone());
    typed_sorted.sort();
    known_sorted.sort();
    if typed_sorted == known_sorted {
        return true;
    }
    if typed.len() != known.len() {
        return false;
    }
    let mut differing = typed.iter().zip(&known).filter(|(a, b)| a != b);
    match (differing.next(), differing.next()) {
        (Some((a, b)), None) => edit_distance(a, b) <= if b.len() >= 7 { 2 } else { 1 },
        _ => false,
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::tree::Source;

    fn warnings(text: &str) -> Vec<String> {
        let src = Source { path: Path::new("fly.toml"), text };
        let root = src.parse().unwrap();
        let mut reader = Reader::new(src);
        warn_unknown(&mut reader, &root, ROOT, "");
        reader.into_warnings().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn warns_for_unknown_keys_at_every_level_with_their_location() {
        let text = "app = \"a\"\norg = \"x\"\n[experimental]\n  foo = 1\n[[services]]\n  [[services.ports]]\n    port = 80\n    bogus = 1\n";
        assert_eq!(
            warnings(text),
            [
                "2:1: unknown key `org`",
                "4:3: unknown key `experimental.foo`",
                "8:5: unknown key `services.ports.bogus`"
            ]
        );
    }

    #[test]
    fn known_fly_keys_and_free_form_tables_are_quiet() {
        let text =
            "swap_size_mb = 512\nvm.size = \"a100-40gb\"\n[build.args]\n  ANYTHING = \"x\"\n[env]\n  lower = \"x\"\n\
                    [checks.my_check]\n  type = \"http\"\n  [checks.my_check.headers]\n    X-Any = \"y\"\n\
                    [[services]]\n  script_checks = []\n  [[services.tcp_checks]]\n    restart_limit = 0\n\
                    [ferry.regions.syd]\n  hosts = []\n";
        assert_eq!(warnings(text), Vec::<String>::new());
    }

    #[test]
    fn suggests_near_misses() {
        let text =
            "[[services]]\n  auto_machine_start = true\n  min_machine_running = 1\n[ferry]\n  keep_release = 3\n";
        assert_eq!(
            warnings(text),
            [
                "2:3: unknown key `services.auto_machine_start`; did you mean `services.auto_start_machines`?",
                "3:3: unknown key `services.min_machine_running`; did you mean `services.min_machines_running`?",
                "5:3: unknown key `ferry.keep_release`; did you mean `ferry.keep_releases`?",
            ]
        );
    }

    #[test]
    fn a_different_word_is_not_a_typo() {
        let text =
            "[http_service]\n  max_machines_running = 5\n  inernal_port = 80\n[deploy]\n  stratgey = \"rolling\"\n";
        assert_eq!(
            warnings(text),
            [
                "2:3: unknown key `http_service.max_machines_running`",
                "3:3: unknown key `http_service.inernal_port`; did you mean `http_service.internal_port`?",
                "5:3: unknown key `deploy.stratgey`; did you mean `deploy.strategy`?",
            ]
        );
    }

    #[test]
    fn odd_keys_are_quoted_in_paths() {
        assert_eq!(warnings("[experimental]\n\"a b\" = 1\n"), ["2:1: unknown key `experimental.\"a b\"`"]);
    }
}
