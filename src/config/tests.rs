//! Behaviour of `parse`/`load` as a whole: the real-world corpus, legacy forms, defaults,
//! located errors and warnings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const PATH: &str = "/srv/hello/fly.toml";

fn parse_ok(text: &str) -> Loaded {
    match parse(Path::new(PATH), text) {
        Ok(loaded) => loaded,
        Err(error) => panic!("{error}"),
    }
}

fn config(text: &str) -> Config {
    parse_ok(&format!("app = \"hello\"\n{text}")).config
}

fn warnings(text: &str) -> Vec<String> {
    parse_ok(text).warnings.iter().map(ToString::to_string).collect()
}

/// The `line:column: message` of an `Invalid` error.
fn invalid(text: &str) -> String {
    match parse(Path::new(PATH), text) {
        Err(ConfigError::Invalid { line, column, message, .. }) => format!("{line}:{column}: {message}"),
        other => panic!("expected an invalid config, got {other:?}"),
    }
}

fn secs(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

#[test]
fn every_valid_corpus_file_loads_and_the_broken_ones_fail_where_they_break() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/fly-toml");
    let listing =
        std::fs::read_dir(&corpus).unwrap_or_else(|e| panic!("the fly.toml corpus at {}: {e}", corpus.display()));
    let mut files: Vec<PathBuf> =
        listing.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect();
    files.sort();
    assert_eq!(files.len(), 73);
    // Where each broken file stops being TOML: a bare word as a value, `key: value`, and
    // `[[services.http_checks]]` after `http_checks = []`.
    let broken = [
        ("050.toml", 8, 26, "DJANGO_SETTINGS_MODULE = app.settings.production"),
        ("051.toml", 23, 11, "  ENV_TYPE: production"),
        ("052.toml", 42, 3, "  [[services.http_checks]]"),
    ];
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap();
        let result = load(file);
        if let Some((_, want_line, want_column, want_text)) = broken.iter().find(|(broken, ..)| *broken == name) {
            let Err(ConfigError::Syntax { line, column, line_text, .. }) = result else {
                panic!("{name}: expected a syntax error, got {result:?}")
            };
            assert_eq!((line, column, line_text.as_str()), (*want_line, *want_column, *want_text), "{name}");
        } else {
            let loaded = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!loaded.config.app.is_empty(), "{name}");
            serde_json::to_string(&loaded.config).unwrap();
        }
    }
}

#[test]
fn corpus_legacy_and_odd_files_resolve_as_fly_reads_them() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/fly-toml");
    assert!(corpus.is_dir(), "the fly.toml corpus is missing at {}", corpus.display());
    let load = |name: &str| load(&corpus.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));

    // 028: `[[services.ports]]` without `[[services]]` makes `services` one table.
    let odd = load("028.toml").config;
    assert_eq!(odd.internal_port, Some(8080));
    assert_eq!(odd.checks[0].name, "services[0].http_checks[0]");
    assert_eq!(odd.checks[0].interval, secs(60));

    // 007: no `app`, so the directory name, with a warning.
    let nameless = load("007.toml");
    assert_eq!(nameless.config.app, "fly-toml");
    assert_eq!(nameless.warnings[0].to_string(), "1:1: missing `app`; using the directory name `fly-toml`");

    // 031: misspelled keys warn, with the key Fly knows.
    let misspelled: Vec<String> = load("031.toml").warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        misspelled,
        [
            "26:1: unknown key `services.auto_machine_start`; did you mean `services.auto_start_machines`?",
            "27:1: unknown key `services.auto_machine_stop`; did you mean `services.auto_stop_machines`?",
            "28:1: unknown key `services.min_machine_running`; did you mean `services.min_machines_running`?",
        ]
    );

    // 072: `release_command_timeout = 900` is read as seconds, with a warning.
    let timeout = load("072.toml");
    assert_eq!(timeout.config.deploy.release_command_timeout, Some(secs(900)));
    assert_eq!(timeout.config.deploy.strategy, Strategy::Immediate);
    assert!(timeout.warnings.iter().any(|w| w.line == 14 && w.message.contains("read as seconds")));

    // 001: top-level checks in file order with their own port.
    let checks = load("001.toml").config.checks;
    let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["pg", "role", "vm"]);
    assert_eq!(checks[2].interval, secs(60));
    assert_eq!(checks[2].port, Some(5500));
}

#[test]
fn minimal_config_gets_fly_and_ferry_defaults() {
    let loaded = parse_ok("app = \"hello\"\n");
    assert!(loaded.warnings.is_empty());
    let c = loaded.config;
    assert_eq!(c.app, "hello");
    assert_eq!(c.dir, PathBuf::from("/srv/hello"));
    assert_eq!(c.kill_signal, "SIGINT");
    assert_eq!(c.kill_timeout, secs(5));
    assert_eq!(
        c.deploy,
        DeployConfig {
            release_command: None,
            release_command_timeout: Some(secs(300)),
            strategy: Strategy::Rolling,
            max_unavailable: MaxUnavailable::Count(1),
            wait_timeout: secs(300),
        }
    );
    assert_eq!(c.internal_port, None);
    assert!(c.checks.is_empty() && c.mounts.is_empty() && c.env.is_empty() && c.processes.is_empty());
    let f = &c.ferry;
    assert_eq!((f.target, f.root.as_str(), f.keep_releases), (Target::Local, "~/ferry", 5));
    assert_eq!(f.replica_wait_timeout, secs(120));
    assert_eq!(f.build, BuildConfig { command: None, path: PathBuf::from("/srv/hello"), start: None });
    assert!(f.regions.is_empty());
    assert_eq!(
        f.backup,
        BackupConfig { before_migrate: false, database_url_env: "DATABASE_URL".into(), run: BackupRun::Host, keep: 10 }
    );
    assert_eq!(
        c.regions(),
        [(
            "local".to_string(),
            RegionConfig { hosts: vec![], count: 1, counts: BTreeMap::new(), replica_url_env: None, replica_url: None }
        )]
    );
    assert_eq!(c.primary(), "local");
    assert_eq!(c.start_command(), None);
}

#[test]
fn kill_timeout_integer_is_seconds_and_strings_are_durations() {
    assert_eq!(config("kill_timeout = 300").kill_timeout, secs(300));
    assert_eq!(config("kill_timeout = \"30s\"").kill_timeout, secs(30));
    assert_eq!(config("kill_timeout = \"3m0s\"").kill_timeout, secs(180));
    assert_eq!(config("kill_timeout = 1.5").kill_timeout, Duration::from_millis(1_500));
    assert_eq!(config("[experimental]\nkill_timeout = 7").kill_timeout, secs(7));
    assert_eq!(
        invalid("app = \"a\"\nkill_timeout = \"abc\""),
        "2:16: `kill_timeout`: invalid duration `abc`: expected a number and a unit, such as `10s`, `1m30s`, `1.5s` or `300ms`"
    );
}

#[test]
fn kill_signal_is_normalised_and_validated() {
    assert_eq!(config("kill_signal = \"SIGTERM\"").kill_signal, "SIGTERM");
    assert_eq!(config("kill_signal = \"sigterm\"").kill_signal, "SIGTERM");
    assert_eq!(config("kill_signal = \"TERM\"").kill_signal, "SIGTERM");
    assert_eq!(config("kill_signal = \" usr1 \"").kill_signal, "SIGUSR1");
    let error = invalid("app = \"a\"\nkill_signal = \"SIGFOO\"");
    assert!(error.starts_with("2:15: unknown `kill_signal` `SIGFOO`: expected one of `SIGABRT`"), "{error}");
}

#[test]
fn check_durations_written_as_integers_are_milliseconds() {
    let c = config("[[services]]\n  internal_port = 8080\n  [[services.tcp_checks]]\n    interval = 10000\n    timeout = 2000\n    grace_period = 500\n");
    let check = &c.checks[0];
    assert_eq!((check.interval, check.timeout, check.grace_period), (secs(10), secs(2), Duration::from_millis(500)));
    assert_eq!(check.kind, CheckKind::Tcp);
}

#[test]
fn check_durations_accept_go_strings_and_fractions() {
    let c = config("[checks.web]\n  type = \"tcp\"\n  port = 8080\n  grace_period = \"1m0s\"\n  interval = \"1.5s\"\n  timeout = \"300ms\"\n");
    let check = &c.checks[0];
    assert_eq!(
        (check.grace_period, check.interval, check.timeout),
        (secs(60), Duration::from_millis(1_500), Duration::from_millis(300))
    );
}

#[test]
fn check_defaults_and_http_details() {
    let c = config(
        "[http_service]\n  internal_port = 8080\n  [[http_service.checks]]\n    method = \"get\"\n    protocol = \"https\"\n    \
         [http_service.checks.headers]\n      X-Forwarded-Proto = \"https\"\n      X-Count = 3\n  [[http_service.checks]]\n",
    );
    assert_eq!(c.checks.len(), 2);
    let first = &c.checks[0];
    assert_eq!(first.name, "http_service.checks[0]");
    assert_eq!(first.port, Some(8080));
    let CheckKind::Http { method, path, headers, tls } = &first.kind else { panic!("{first:?}") };
    assert_eq!((method.as_str(), path.as_str(), *tls), ("GET", "/", true));
    assert_eq!(headers.get("X-Forwarded-Proto").map(String::as_str), Some("https"));
    assert_eq!(headers.get("X-Count").map(String::as_str), Some("3"));
    let second = &c.checks[1];
    assert_eq!((second.interval, second.timeout, second.grace_period), (secs(15), secs(2), Duration::ZERO));
    assert_eq!(
        second.kind,
        CheckKind::Http { method: "GET".into(), path: "/".into(), headers: BTreeMap::new(), tls: false }
    );
}

#[test]
fn checks_come_in_file_order_with_their_service_port() {
    let c = config(
        "[checks.late]\n  type = \"http\"\n  port = 9000\n  path = \"/late\"\n\
         [[services]]\n  internal_port = \"5000\"\n  [[services.http_checks]]\n    path = \"/a\"\n\
         [[services]]\n  internal_port = 8080\n  http_checks = []\n  [[services.tcp_checks]]\n",
    );
    let found: Vec<(&str, Option<u16>)> = c.checks.iter().map(|c| (c.name.as_str(), c.port)).collect();
    assert_eq!(
        found,
        [("late", Some(9000)), ("services[0].http_checks[0]", Some(5000)), ("services[1].tcp_checks[0]", Some(8080))]
    );
    assert_eq!(c.internal_port, Some(5000));
}

#[test]
fn top_level_checks_need_a_known_type() {
    assert_eq!(
        invalid("app = \"a\"\n[checks.x]\n  type = \"grpc\"\n"),
        "3:10: `checks.x.type` must be \"http\" or \"tcp\""
    );
    assert_eq!(invalid("app = \"a\"\n[checks.x]\n  port = 80\n"), "2:1: `checks.x.type` must be \"http\" or \"tcp\"");
}

#[test]
fn release_command_timeout_none_means_no_limit() {
    let c = config("[deploy]\n  release_command = \"bin/migrate\"\n  release_command_timeout = \"none\"\n");
    assert_eq!(c.deploy.release_command.as_deref(), Some("bin/migrate"));
    assert_eq!(c.deploy.release_command_timeout, None);
    assert_eq!(
        config("[deploy]\n  release_command_timeout = \"10m\"\n").deploy.release_command_timeout,
        Some(secs(600))
    );
    assert_eq!(config("[deploy]\n  release_command = \"\"\n").deploy.release_command, None);
}

#[test]
fn integer_deploy_timeouts_are_seconds_with_a_warning() {
    let loaded = parse_ok("app = \"a\"\n[deploy]\n  wait_timeout = 90\n");
    assert_eq!(loaded.config.deploy.wait_timeout, secs(90));
    assert_eq!(
        loaded.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["3:18: `deploy.wait_timeout` = 90 is read as seconds (`1m 30s`); write \"1m 30s\" to say so"]
    );
}

#[test]
fn every_fly_strategy_parses_and_others_fail_at_the_value() {
    for (written, strategy) in [
        ("rolling", Strategy::Rolling),
        ("immediate", Strategy::Immediate),
        ("canary", Strategy::Canary),
        ("bluegreen", Strategy::Bluegreen),
    ] {
        assert_eq!(config(&format!("[deploy]\nstrategy = \"{written}\"")).deploy.strategy, strategy);
    }
    assert_eq!(
        invalid("app = \"a\"\n[deploy]\n  strategy = \"sideways\"\n"),
        "3:14: unknown `deploy.strategy` `sideways`: expected `rolling`, `immediate`, `canary` or `bluegreen`"
    );
    assert_eq!(
        invalid("app = \"a\"\n[deploy]\n  strategy = 1\n"),
        "3:14: `deploy.strategy` must be a string, not an integer"
    );
}

#[test]
fn max_unavailable_is_a_fraction_below_one_and_a_count_from_one() {
    assert_eq!(config("[deploy]\nmax_unavailable = 0.5").deploy.max_unavailable, MaxUnavailable::Fraction(0.5));
    assert_eq!(config("[deploy]\nmax_unavailable = 2").deploy.max_unavailable, MaxUnavailable::Count(2));
    assert_eq!(config("[deploy]\nmax_unavailable = 3.0").deploy.max_unavailable, MaxUnavailable::Count(3));
    for bad in ["0", "-1", "1.5", "\"half\""] {
        let error = invalid(&format!("app = \"a\"\n[deploy]\nmax_unavailable = {bad}"));
        assert!(error.starts_with("3:19: `deploy.max_unavailable` must be a fraction"), "{bad}: {error}");
    }
}

#[test]
fn per_batch_is_at_least_one_and_at_most_the_region() {
    assert_eq!(MaxUnavailable::Fraction(0.5).per_batch(4), 2);
    assert_eq!(MaxUnavailable::Fraction(0.5).per_batch(5), 2);
    assert_eq!(MaxUnavailable::Fraction(0.33).per_batch(2), 1);
    assert_eq!(MaxUnavailable::Fraction(0.99).per_batch(0), 1);
    assert_eq!(MaxUnavailable::Count(1).per_batch(3), 1);
    assert_eq!(MaxUnavailable::Count(5).per_batch(3), 3);
    assert_eq!(MaxUnavailable::Count(5).per_batch(0), 1);
}

#[test]
fn legacy_mount_table_and_mounts_array_are_read() {
    let legacy = config("[mount]\nsource=\"cdb_data\"\ndestination=\"/cockroach\"\n");
    assert_eq!(
        legacy.mounts,
        [Mount { source: "cdb_data".into(), destination: "/cockroach".into(), processes: vec![] }]
    );
    let table = config("[mounts]\n  source = \"data\"\n  destination = \"/data\"\n  processes = [\"app\"]\n");
    assert_eq!(table.mounts[0].processes, ["app"]);
    let array = config(
        "[[mounts]]\n  source = \"a\"\n  destination = \"/a\"\n  initial_size = \"1gb\"\n[[mounts]]\n  source = \"b\"\n  destination = \"/b\"\n",
    );
    let sources: Vec<&str> = array.mounts.iter().map(|m| m.source.as_str()).collect();
    assert_eq!(sources, ["a", "b"]);
    assert_eq!(invalid("app = \"a\"\n[[mounts]]\n  source = \"a\"\n"), "2:1: `mounts` needs a `destination`");
}

#[test]
fn string_ports_are_numbers_and_impossible_ports_fail_at_the_value() {
    let c = config("[[services]]\n  internal_port = \"8080\"\n  [[services.ports]]\n    port = \"443\"\n");
    assert_eq!(c.internal_port, Some(8080));
    assert_eq!(
        invalid("app = \"a\"\n[[services]]\n  internal_port = 8080\n  [[services.ports]]\n    port = 70000\n"),
        "5:12: `services.ports.port` `70000` is not a port (0 to 65535)"
    );
    assert_eq!(
        invalid("app = \"a\"\n[http_service]\n  internal_port = -1\n"),
        "3:19: `http_service.internal_port` `-1` is not a port (0 to 65535)"
    );
}

#[test]
fn internal_port_prefers_http_service_and_ignores_zero() {
    let c = config("[http_service]\n  internal_port = 3_000\n[[services]]\n  internal_port = 0\n");
    assert_eq!(c.internal_port, Some(3000));
    assert_eq!(config("[[services]]\n  internal_port = 0\n").internal_port, None);
}

#[test]
fn env_values_that_are_not_strings_become_text() {
    let c = config("[env]\n  PORT = 8080\n  ECTO_IPV6 = true\n  RATE = 0.25\n  NAME = \"x\"\n  lower_ok = \"y\"\n");
    let env: Vec<(&str, &str)> = c.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(env, [("ECTO_IPV6", "true"), ("NAME", "x"), ("PORT", "8080"), ("RATE", "0.25"), ("lower_ok", "y")]);
}

#[test]
fn env_keys_must_be_shell_names() {
    assert_eq!(
        invalid("app = \"a\"\n[env]\n  OK = \"1\"\n  \"BAD-KEY\" = \"2\"\n"),
        "4:3: `env` key `BAD-KEY` is not a valid environment variable name: use letters, digits and `_`, not starting with a digit"
    );
    assert!(invalid("app = \"a\"\n[env]\n  1ST = \"x\"\n").starts_with("3:3: `env` key `1ST`"));
    assert_eq!(
        invalid("app = \"a\"\n[env]\n  LIST = [1]\n"),
        "3:10: `env.LIST` must be a string, number or boolean, not an array"
    );
}

#[test]
fn processes_table_and_legacy_empty_array() {
    let c = config("[processes]\n  app = \"bin/server\"\n  worker = \"bin/worker\"\n");
    assert_eq!(c.processes.get("worker").map(String::as_str), Some("bin/worker"));
    assert_eq!(c.start_command(), Some("bin/server"));
    assert!(config("processes = []\n").processes.is_empty());
}

#[test]
fn unknown_keys_warn_with_their_location_and_never_fail() {
    assert_eq!(
        warnings("app = \"a\"\n[experimental]\n  auto_rollback = true\n  foo = 1\n[http_service]\n  internal_port = 80\n  bogus = true\n"),
        ["4:3: unknown key `experimental.foo`", "7:3: unknown key `http_service.bogus`"]
    );
}

#[test]
fn missing_or_empty_app_falls_back_to_the_directory_name() {
    let loaded = parse_ok("primary_region = \"syd\"\n");
    assert_eq!(loaded.config.app, "hello");
    assert_eq!(loaded.warnings[0].to_string(), "1:1: missing `app`; using the directory name `hello`");
    let empty = parse_ok("app = ''\n");
    assert_eq!(empty.config.app, "hello");
    assert_eq!(empty.warnings[0].to_string(), "1:7: `app` is empty; using the directory name `hello`");
    assert_eq!(invalid("app = \"../etc\"\n"), "1:7: `app` `../etc` is not a usable app name: use letters, digits, `-`, `_` and `.`, starting with a letter or digit");
}

#[test]
fn ferry_section_with_regions() {
    let c = config(
        "primary_region = \"syd\"\n\
         [ferry]\n  target = \"ssh\"\n  root = \"/opt/ferry\"\n  keep_releases = 3\n  replica_wait_timeout = \"30s\"\n\
         [ferry.build]\n  command = \"mix release\"\n  path = \"_build/prod/rel/hello\"\n  start = \"bin/hello start\"\n\
         [ferry.regions.syd]\n  hosts = [\"deploy@syd1.example.com\", \"deploy@syd2.example.com:2222\"]\n  count = 2\n\
         [ferry.regions.lax]\n  hosts = [\"deploy@lax1.example.com\"]\n  replica_url_env = \"REPLICA_URL\"\n\
         [ferry.backup]\n  before_migrate = true\n  run = \"local\"\n  keep = 3\n",
    );
    let f = &c.ferry;
    assert_eq!(
        (f.target, f.root.as_str(), f.keep_releases, f.replica_wait_timeout),
        (Target::Ssh, "/opt/ferry", 3, secs(30))
    );
    assert_eq!(f.build.path, PathBuf::from("/srv/hello/_build/prod/rel/hello"));
    assert_eq!(f.build.command.as_deref(), Some("mix release"));
    assert_eq!(c.start_command(), Some("bin/hello start"));
    let regions: Vec<(String, u32, usize)> =
        c.regions().into_iter().map(|(n, r)| (n, r.count, r.hosts.len())).collect();
    assert_eq!(regions, [("lax".to_string(), 1, 1), ("syd".to_string(), 2, 2)]);
    assert_eq!(f.regions["lax"].replica_url_env.as_deref(), Some("REPLICA_URL"));
    assert_eq!(c.primary(), "syd");
    assert_eq!(
        f.backup,
        BackupConfig { before_migrate: true, database_url_env: "DATABASE_URL".into(), run: BackupRun::Local, keep: 3 }
    );
}

#[test]
fn ferry_values_are_validated_where_written() {
    assert_eq!(
        invalid("app = \"a\"\n[ferry.regions.Sydney]\n"),
        "2:16: region name `Sydney` must be lowercase letters, digits and `-`, starting with a letter or digit"
    );
    assert_eq!(
        invalid("app = \"a\"\n[ferry]\ntarget = \"fly\"\n"),
        "3:10: unknown `ferry.target` `fly`: expected `local` or `ssh`"
    );
    assert_eq!(
        invalid("app = \"a\"\n[ferry]\nkeep_releases = 1\n"),
        "3:17: `ferry.keep_releases` must be at least 2, not `1`"
    );
    assert_eq!(
        invalid("app = \"a\"\n[ferry.regions.syd]\ncount = -1\n"),
        "3:9: `ferry.regions.syd.count` must be at least 0, not `-1`"
    );
    assert_eq!(
        invalid("app = \"a\"\n[ferry.regions.syd]\nhosts = [\"deploy@\"]\n"),
        "3:10: `ferry.regions.syd.hosts` entry `deploy@` must look like `user@host` or `user@host:port`"
    );
    assert_eq!(
        invalid("app = \"a\"\n[ferry.backup]\nrun = \"cloud\"\n"),
        "3:7: unknown `ferry.backup.run` `cloud`: expected `host` or `local`"
    );
    assert_eq!(
        invalid("app = \"a\"\nprimary_region = \"SYD\"\n"),
        "2:18: `primary_region` `SYD` is not a region name: use lowercase letters, digits and `-`"
    );
}

#[test]
fn regions_fall_back_to_primary_region_and_warn_when_it_has_no_section() {
    let c = config("primary_region = \"ams\"\n");
    assert_eq!(c.regions()[0].0, "ams");
    assert_eq!(c.primary(), "ams");
    let loaded = parse_ok("app = \"a\"\nprimary_region = \"ams\"\n[ferry.regions.syd]\n");
    assert_eq!(
        loaded.warnings[0].to_string(),
        "2:18: `primary_region` `ams` has no `[ferry.regions.ams]`; regions are `syd`"
    );
}

#[test]
fn unknown_ferry_keys_warn() {
    assert_eq!(
        warnings("app = \"a\"\n[ferry]\n  tarjet = \"ssh\"\n"),
        ["3:3: unknown key `ferry.tarjet`; did you mean `ferry.target`?"]
    );
}

#[test]
fn resolved_config_serializes_durations_as_milliseconds() {
    let c = config("kill_timeout = 5\n[deploy]\n  release_command_timeout = \"none\"\n[checks.web]\n  type = \"tcp\"\n  interval = \"15s\"\n");
    let json: serde_json::Value = serde_json::to_value(&c).unwrap();
    assert_eq!(json["kill_timeout"], 5_000);
    assert_eq!(json["deploy"]["release_command_timeout"], serde_json::Value::Null);
    assert_eq!(json["deploy"]["strategy"], "rolling");
    assert_eq!(json["deploy"]["max_unavailable"], 1);
    assert_eq!(json["checks"][0]["interval"], 15_000);
    assert_eq!(json["checks"][0]["kind"]["type"], "tcp");
    assert_eq!(json["ferry"]["target"], "local");
    assert_eq!(json["ferry"]["replica_wait_timeout"], 120_000);
    assert!(json.get("path").is_none() && json.get("dir").is_none());
}

#[test]
fn load_reads_the_file_and_names_it_when_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fly.toml");
    std::fs::write(&path, "app = \"from-disk\"\n").unwrap();
    let loaded = load(&path).unwrap();
    assert_eq!(loaded.config.app, "from-disk");
    assert_eq!(loaded.config.path, path);
    assert_eq!(loaded.config.dir, dir.path());

    let missing = dir.path().join("nope.toml");
    let error = load(&missing).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }));
    assert_eq!(error.to_string(), format!("failed to read `{}`", missing.display()));
}

#[test]
fn syntax_errors_name_file_line_and_column() {
    let error = parse(Path::new("fly.toml"), "app = \"a\"\n[env]\nPORT = 8080\nMODULE = app.settings\n").unwrap_err();
    assert_eq!(
        error.to_string(),
        "`fly.toml:4:10`: invalid TOML: invalid string: expected `\"`, `'`\n  | MODULE = app.settings\n  |          ^"
    );
}

#[test]
fn relative_config_paths_resolve_to_an_absolute_dir() {
    let c = parse(Path::new("fly.toml"), "app = \"a\"\n").unwrap().config;
    assert!(c.dir.is_absolute());
    assert_eq!(c.dir, std::env::current_dir().unwrap());
}

#[test]
fn keys_ferry_does_not_act_on_and_udp_services_get_one_warning_each() {
    let got = warnings(
        "app = \"hello\"\n[build]\n  image = \"flyio/hello\"\n[experimental]\n  cmd = [\"x\"]\n[[vm]]\n  memory = \"1gb\"\n\
         [[statics]]\n  guest_path = \"/app/public\"\n  url_prefix = \"/static\"\n\
         [[services]]\n  internal_port = 5353\n  protocol = \"udp\"\n",
    );
    let expect = [
        "3:11: `build.image` is not used by ferry",
        "5:9: `experimental.cmd` is not used by ferry",
        "[[vm]] is not used by ferry",
        "[[statics]] is not used by ferry",
        "a UDP service gets no front door",
    ];
    for e in expect {
        assert_eq!(got.iter().filter(|w| w.contains(e)).count(), 1, "{e} in {got:#?}");
    }
}

#[test]
fn a_template_placeholder_for_the_app_name_is_named_as_one() {
    let message = invalid("app = \"{APP_NAME}\"\n");
    assert!(message.contains("looks like a template placeholder"), "{message}");
}

#[test]
fn process_groups_follow_flys_rules() {
    let none = config("");
    assert_eq!((none.groups(), none.default_group()), (vec!["app".to_string()], "app".to_string()));
    let text = r#"
[processes]
  worker = "bin/hello worker"
  web = "bin/hello web"

[http_service]
  internal_port = 8080

[[http_service.checks]]
  path = "/health"

[checks.queue]
  type = "tcp"
  port = 8080
  processes = ["worker"]

[[mounts]]
  source = "data"
  destination = "/data"
  processes = ["worker"]

[ferry.regions.syd]
  count = 2
  counts = { worker = 1 }
"#;
    let c = config(text);
    assert_eq!(c.groups(), ["web", "worker"]);
    assert_eq!(c.default_group(), "web", "without `app` the first group in sorted order");
    assert_eq!(c.start_of("worker"), Some("bin/hello worker"));
    assert_eq!(c.start_command(), Some("bin/hello web"));
    assert!(c.applies(&c.services[0].processes, "web") && !c.applies(&c.services[0].processes, "worker"));
    let for_worker: Vec<&str> =
        c.checks.iter().filter(|k| c.applies(&k.processes, "worker")).map(|k| k.name.as_str()).collect();
    assert_eq!(for_worker, ["queue"]);
    let syd = &c.ferry.regions["syd"];
    assert_eq!((syd.count_of("web"), syd.count_of("worker")), (2, 1));
}

#[test]
fn a_process_group_that_does_not_exist_is_warned_about_where_it_is_named() {
    let text = "app = \"a\"\n[processes]\n  web = \"x\"\n[[services]]\n  internal_port = 8080\n  processes = [\"wbe\"]\n[ferry.regions.syd.counts]\n  worker = 1\n";
    let found = warnings(text);
    assert!(found.iter().any(|w| w.contains("6:16") && w.contains("`wbe` is not in `[processes]`")), "{found:?}");
    assert!(found.iter().any(|w| w.contains("8:3") && w.contains("`worker`")), "{found:?}");
    assert_eq!(
        invalid("app = \"a\"\n[processes]\n  \"we b\" = \"x\"\n"),
        "3:3: process group name `we b` must be letters, digits, `-` and `_`"
    );
}

#[test]
fn a_check_with_no_port_and_no_service_is_warned_about_with_what_ferry_does() {
    let text = "app = \"a\"\n[checks.alive]\n  type = \"tcp\"\n";
    let found = warnings(text);
    assert!(
        found.iter().any(|w| w.contains("check `alive` has no `port` and the app has no service")
            && w.contains("each instance's $PORT")),
        "{found:?}"
    );
    let served = format!("{text}[http_service]\n  internal_port = 8080\n");
    assert!(!warnings(&served).iter().any(|w| w.contains("no `port`")));
}
