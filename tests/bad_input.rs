//! Bad input gets a clear error, the right exit code, and changes nothing.

mod common;

use common::{Project, FERRY};

fn nothing_deployed(project: &Project) -> bool {
    !project.path().join(".ferry/local").exists()
}

#[test]
fn invalid_toml_is_located_and_exits_2() {
    let project = Project::builder().region("syd", 1).build();
    std::fs::write(project.path().join("fly.toml"), "app = \"hello\"\n[deploy\nstrategy = \"rolling\"\n").unwrap();
    let run = project.deploy("v1");
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("fly.toml:2:"), "names file:line:column: {}", run.stderr);
    assert!(run.stderr.contains("[deploy"), "shows the offending line: {}", run.stderr);
    assert!(nothing_deployed(&project));
}

#[test]
fn invalid_value_is_located_and_exits_2() {
    let project = Project::builder().region("syd", 1).build();
    std::fs::write(project.path().join("fly.toml"), "app = \"hello\"\n\n[deploy]\n  strategy = \"sideways\"\n")
        .unwrap();
    let run = project.ferry(&["config", "validate"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("fly.toml:4:"), "{}", run.stderr);
    assert!(run.stderr.contains("sideways"), "{}", run.stderr);
}

#[test]
fn config_validate_lists_warnings_and_exits_0() {
    let project =
        Project::builder().region("syd", 1).toml("[experimental]\n  not_a_real_key = true\n\nmystery = 1").build();
    let run = project.ferry(&["config", "validate"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("warning"), "{}", run.stderr);
    assert!(run.stderr.contains("mystery"), "{}", run.stderr);
}

#[test]
fn config_show_prints_durations_in_ms() {
    let project = Project::builder().region("syd", 1).build();
    let run = project.ferry(&["config", "show", "--json"]);
    run.assert_ok();
    let config = run.data();
    assert_eq!(config["deploy"]["wait_timeout"], 60_000);
    assert_eq!(config["kill_timeout"], 5_000);
}

#[test]
fn every_corpus_file_validates_or_fails_located() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/fly-toml");
    let entries =
        std::fs::read_dir(&corpus).unwrap_or_else(|e| panic!("the fly.toml corpus at {}: {e}", corpus.display()));
    let mut files: Vec<_> =
        entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect();
    files.sort();
    assert!(files.len() >= 70);
    for file in files {
        let out =
            std::process::Command::new(FERRY).arg("config").arg("validate").arg("-c").arg(&file).output().unwrap();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if ["050.toml", "051.toml", "052.toml"].contains(&name.as_str()) {
            assert_eq!(out.status.code(), Some(2), "{name} must fail: {stderr}");
            assert!(stderr.contains(&format!("{name}:")), "{name}: located error: {stderr}");
        } else {
            assert_eq!(out.status.code(), Some(0), "{name} must load: {stderr}");
        }
    }
}

#[test]
fn missing_start_command_is_refused_before_anything_changes() {
    let project = Project::builder().region("syd", 1).start(None).build();
    let run = project.deploy("v1");
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("no start command"), "{}", run.stderr);
    assert!(nothing_deployed(&project));
}

#[test]
fn unsafe_version_is_refused() {
    let project = Project::builder().region("syd", 1).build();
    for version in ["v1;rm -rf ~", "../v1", "v 1", "$(id)"] {
        let run = project.deploy(version);
        assert_eq!(run.code, 2, "{version}: {}", run.stderr);
        assert!(run.stderr.contains("invalid release version"), "{}", run.stderr);
    }
    assert!(nothing_deployed(&project));
}

#[test]
fn tarball_escaping_its_directory_is_refused() {
    let project = Project::builder().region("syd", 1).build();
    let evil = project.path().join("evil.tar.gz");
    write_evil_tarball(&evil);
    let run = project.ferry(&["deploy", "--release", evil.to_str().unwrap()]);
    assert!(run.code == 1 || run.code == 2, "{}", run.stderr);
    assert!(run.stderr.contains("../"), "names the bad entry: {}", run.stderr);
    assert!(nothing_deployed(&project));
    assert!(!project.path().parent().unwrap().join("escaped").exists());
}

/// A gzip'd tar of `manifest` and then `entries` (name, type, data), names written raw.
fn write_tarball(path: &std::path::Path, manifest: &[u8], entries: &[(&[u8], tar::EntryType, &[u8])]) {
    let file = std::fs::File::create(path).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_path("ferry-manifest.json").unwrap();
    header.set_size(manifest.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append(&header, manifest).unwrap();
    for (name, kind, body) in entries {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_entry_type(*kind);
        header.set_size(body.len() as u64);
        header.set_mode(if *kind == tar::EntryType::Symlink { 0o777 } else { 0o644 });
        if *kind == tar::EntryType::Symlink {
            header.set_link_name("bin").unwrap();
        }
        header.set_cksum();
        builder.append(&header, *body).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap();
}

#[test]
fn a_release_archive_that_would_unpack_past_the_limit_is_refused_before_it_is_read() {
    let project = Project::builder().region("syd", 1).build();
    let bomb = project.path().join("bomb.tar.gz");
    // Tiny, but its manifest promises 9 GiB of zeros.
    let manifest = format!(
        r#"{{"app":"hello","version":"v1","git_commit":null,"files":[{{"path":"zeros","kind":"file","size":{},"sha256":"{}","mode":420}}]}}"#,
        9_u64 << 30,
        "0".repeat(64)
    );
    write_tarball(&bomb, manifest.as_bytes(), &[]);
    let run = project.ferry(&["deploy", "--release", bomb.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("unpacks to 9.0 GiB") && run.stderr.contains("8.0 GiB"), "{}", run.stderr);
    assert!(nothing_deployed(&project));
}

#[test]
fn a_release_archive_holding_a_name_ferry_writes_is_refused() {
    let project = Project::builder().region("syd", 1).build();
    for name in [&b".ferry-release"[..], b".ferry-release.tmp.1"] {
        let archive = project.path().join("planted.tar.gz");
        let manifest = format!(
            r#"{{"app":"hello","version":"v1","git_commit":null,"files":[{{"path":"{}","kind":"symlink","size":0,"mode":511,"target":"bin"}}]}}"#,
            String::from_utf8_lossy(name)
        );
        write_tarball(&archive, manifest.as_bytes(), &[(name, tar::EntryType::Symlink, b"")]);
        let run = project.ferry(&["deploy", "--release", archive.to_str().unwrap()]);
        assert!(run.code == 1 || run.code == 2, "{}", run.stderr);
        assert!(run.stderr.contains("a name ferry writes"), "{}", run.stderr);
        assert!(nothing_deployed(&project));
    }
}

/// A gzip'd tar whose second entry is `../escaped`, written by hand because the `tar`
/// crate refuses to create such a path.
fn write_evil_tarball(path: &std::path::Path) {
    let file = std::fs::File::create(path).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    let manifest = br#"{"app":"hello","version":"v1","git_commit":null,"files":[]}"#;
    let mut header = tar::Header::new_gnu();
    header.set_path("ferry-manifest.json").unwrap();
    header.set_size(manifest.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append(&header, &manifest[..]).unwrap();
    let body = b"pwned";
    let mut header = tar::Header::new_gnu();
    let name = b"../escaped";
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append(&header, &body[..]).unwrap();
    builder.into_inner().unwrap().finish().unwrap();
}

#[test]
fn release_build_is_deterministic_and_reports_json() {
    let project = Project::builder().region("syd", 1).build();
    let first = project.ferry(&["release", "build", "--version", "v1", "--json"]);
    first.assert_ok();
    let a = first.data();
    let second = project.ferry(&["release", "build", "--version", "v1", "--json"]);
    let b = second.data();
    assert_eq!(a["sha256"], b["sha256"]);
    assert_eq!(a["version"], "v1");
    assert!(a["path"].as_str().unwrap().ends_with("hello-v1.tar.gz"));
    assert!(a["size"].as_u64().unwrap() > 0);
}

/// A small tmpfs mounted at a project's `.ferry/local` (root only). On drop it first
/// destroys the project's instances (their state lives on it), then unmounts.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(project: &Project, size: &str) -> Option<SmallDisk> {
        let dir = project.path().join(".ferry/local");
        std::fs::create_dir_all(&dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(project.path().to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new(FERRY).args(["destroy", "--yes", "-q"]).current_dir(&self.0).status();
        let _ = std::process::Command::new("umount").arg("-l").arg(self.0.join(".ferry/local")).status();
    }
}

#[test]
fn full_disk_on_the_host_fails_the_deploy_and_keeps_the_old_release_serving() {
    let project = Project::builder().region("syd", 1).build();
    if !common::need::root() {
        return;
    }
    let _disk = SmallDisk::mount(&project, "4m").expect("root can mount a tmpfs");
    project.deploy("v1").assert_ok();
    // Fill the host's disk but for 64 KiB: room for the lock, not for the release.
    let filler = project.path().join(".ferry/local/filler");
    let df = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(project.path().join(".ferry/local"))
        .output()
        .unwrap();
    let avail: u64 = String::from_utf8_lossy(&df.stdout).lines().nth(1).unwrap().trim().parse().unwrap();
    let blocks = (avail.saturating_sub(64 * 1024) / 4096).to_string();
    let out = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=4096", &format!("count={blocks}")])
        .arg(format!("of={}", filler.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = project.deploy("v2");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("not enough disk space for release v2") && run.stderr.contains("`local/syd`"),
        "says what happened, and where: {}",
        run.stderr
    );
    assert!(run.stderr.contains("it needs") && run.stderr.contains("free"), "need and free: {}", run.stderr);
    assert!(run.stderr.contains("no instance was changed"), "says where things stand: {}", run.stderr);
    assert_eq!(project.versions_served(), ["v1"]);
    std::fs::remove_file(&filler).unwrap();
    project.deploy("v2").assert_ok();
    assert_eq!(project.versions_served(), ["v2"]);
}

#[test]
fn every_command_s_json_is_one_object_per_line_ending_in_finished_or_error() {
    let project = Project::builder().region("syd", 1).build();
    project.deploy("v1").assert_ok();
    for args in [
        &["status", "--json"][..],
        &["releases", "--json"],
        &["logs", "-n", "5", "--json"],
        &["config", "validate", "--json"],
        &["config", "show", "--json"],
        &["secrets", "list", "--json"],
        &["volumes", "list", "--json"],
        &["lock", "status", "--json"],
        &["regions", "list", "--json"],
        &["scale", "count", "1", "--dry-run", "--json"],
    ] {
        let run = project.ferry(args);
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        let _ = run.rows();
        assert_eq!(run.events().last().unwrap()["event"], "finished", "{args:?}");
    }
    let logs = project.ferry(&["logs", "-n", "5", "--json"]).rows();
    assert!(!logs.is_empty() && logs.iter().all(|l| l["line"].is_string() && l["instance"].is_string()));
    // Errors, and usage errors clap itself reports, end with an `error` object.
    for (args, code) in [
        (&["rollback", "v404", "--json"][..], 2),
        (&["deploy", "--no-such-flag", "--json"], 2),
        (&["logs", "-i", "nope", "--json"], 2),
    ] {
        let run = project.ferry(args);
        assert_eq!(run.code, code, "{args:?}: {}", run.stderr);
        let _ = run.rows();
        let last = run.events().last().unwrap().clone();
        assert_eq!(last["event"], "error", "{args:?}: {}", run.stdout);
        assert_eq!(last["exit_code"], code);
        assert!(last["message"].as_str().is_some_and(|m| !m.is_empty()), "{last}");
    }
}

#[test]
fn tables_fit_80_columns_and_mark_the_current_release() {
    let project = Project::builder().region("syd", 2).build();
    project.deploy("v0.1.0-1-gf42f3aa").assert_ok();
    project.deploy("v2").assert_ok();
    for args in [&["status"][..], &["releases"], &["regions", "list"], &["volumes", "list"]] {
        let out = project.command(args).env("COLUMNS", "80").output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.lines().all(|l| l.chars().count() <= 80), "{args:?} fits 80 columns:\n{text}");
    }
    let releases = project.command(&["releases"]).env("COLUMNS", "80").output().unwrap();
    let text = String::from_utf8_lossy(&releases.stdout);
    assert!(text.lines().nth(1).unwrap().trim_start().starts_with("v2 *"), "the current one is marked:\n{text}");
    let wide = project.ferry(&["status"]);
    assert!(wide.stdout.contains("LAST EXIT"), "without a width limit every column shows: {}", wide.stdout);
    assert_eq!(project.releases().iter().filter(|r| r["current"] == true).count(), 1);
}

#[test]
fn completions_and_the_man_page_describe_every_command() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = std::process::Command::new(FERRY).args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
        let script = String::from_utf8_lossy(&out.stdout);
        for command in ["deploy", "rollback", "restart", "secrets", "maintenance"] {
            assert!(script.contains(command), "{shell} completes `{command}`");
        }
    }
    let man = std::process::Command::new(FERRY).arg("man").output().unwrap();
    assert!(man.status.success());
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(page.starts_with(".ie") || page.contains(".TH ferry"), "{}", &page[..page.len().min(200)]);
    assert!(page.contains("deploy") && page.contains("rollback"));
    let bad = std::process::Command::new(FERRY).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "an unknown shell is a usage error");
}

#[test]
fn outcomes_are_coloured_on_a_terminal_and_never_with_no_color_or_a_pipe() {
    let project = Project::builder().region("syd", 1).build();
    project.deploy("v1").assert_ok();
    // `script` gives ferry a terminal, with the project's environment.
    let on_terminal = |version: &str, no_color: bool| {
        let env = project.command(&[]);
        let mut script = std::process::Command::new("script");
        script.args(["-qec", &format!("{FERRY} deploy --version {version}"), "/dev/null"]);
        script.current_dir(project.path()).stdin(std::process::Stdio::null()).env("TERM", "xterm");
        script.envs(env.get_envs().filter_map(|(k, v)| Some((k, v?))));
        if no_color {
            script.env("NO_COLOR", "1");
        } else {
            script.env_remove("NO_COLOR");
        }
        let out = script.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let coloured = on_terminal("v2", false);
    assert!(coloured.contains("\u{1b}[32mhealthy"), "{coloured:?}");
    let plain = on_terminal("v3", true);
    assert!(plain.contains("healthy") && !plain.contains("\u{1b}[3"), "NO_COLOR: {plain:?}");
    let piped = project.deploy("v4");
    assert!(!piped.stderr.contains('\u{1b}'), "{:?}", piped.stderr);
}

#[test]
fn a_front_door_port_held_by_another_program_is_refused_naming_that_program() {
    let project = Project::builder().region("syd", 1).build();
    // This test process holds the port the primary region's door wants.
    let held = std::net::TcpListener::bind(("127.0.0.1", project.port)).unwrap();
    let run = project.deploy("v1");
    assert_ne!(run.code, 0, "{}", run.stderr);
    let me = format!("already in use by pid {} (`", std::process::id());
    assert!(run.stderr.contains(&me), "the holder is named: {}", run.stderr);
    assert!(project.instances().is_empty(), "nothing started: {}", run.stderr);
    drop(held);
    project.deploy("v1").assert_ok();
}

#[test]
fn init_writes_a_fly_toml_for_the_project_it_finds_and_never_overwrites_one() {
    let dir = tempfile::tempdir().unwrap();
    let ferry = |args: &[&str]| {
        let out = std::process::Command::new(FERRY)
            .args(args)
            .current_dir(dir.path())
            .env("FERRY_STATE_DIR", dir.path().join(".agent-state"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        common::Run::from(out)
    };
    let nothing = ferry(&["init"]);
    assert_eq!(nothing.code, 2, "{}", nothing.stderr);
    assert!(nothing.stderr.contains("no project ferry recognises"), "{}", nothing.stderr);

    std::fs::write(
        dir.path().join("mix.exs"),
        "defmodule Shop.MixProject do\n  def project do\n    [\n      app: :shop,\n      version: \"0.1.0\"\n    ]\n  end\n  defp deps, do: [{:phoenix, \"~> 1.7\"}]\nend\n",
    )
    .unwrap();
    let init = ferry(&["init", "--name", "shop", "--region", "syd"]);
    init.assert_ok();
    assert!(init.stderr.contains("for a Phoenix app (Mix release) (found mix.exs)"), "{}", init.stderr);
    assert!(init.stderr.contains("check, before the first `ferry deploy`"), "{}", init.stderr);
    let text = std::fs::read_to_string(dir.path().join("fly.toml")).unwrap();
    for line in [
        "path = \"_build/prod/rel/shop\"",
        "start = \"bin/shop start\"",
        "release_command = \"bin/migrate\"",
        "[ferry.regions.syd]",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    let validate = ferry(&["config", "validate"]);
    validate.assert_ok();
    assert!(validate.stderr.contains("(0 warnings)"), "what init writes is clean: {}", validate.stderr);

    let again = ferry(&["init"]);
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(again.stderr.contains("already exists; nothing was written"), "{}", again.stderr);
    assert_eq!(std::fs::read_to_string(dir.path().join("fly.toml")).unwrap(), text);
}
