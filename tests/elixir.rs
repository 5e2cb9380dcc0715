//! A stock `mix release` (the bundled `examples/hello_ex`, OTP only) deployed through
//! the real binary with Debian's Erlang/OTP and Elixir: node names, the shared cookie,
//! consoles, and nothing left running after `destroy`.

mod common;

use common::Project;

/// Processes of this machine named `name` whose executable is under `dir`.
fn running_from(name: &str, dir: &std::path::Path) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let exe = std::fs::read_link(entry.path().join("exe")).unwrap_or_default();
        if comm.trim() == name && exe.starts_with(dir) {
            found.push(pid);
        }
    }
    found
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let name = entry.file_name();
        if name == "_build" || name == "deps" {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &to.join(&name));
        } else {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

#[test]
fn a_stock_mix_release_runs_as_distinct_nodes_that_share_a_cookie() {
    if !common::need::elixir() {
        return;
    }
    let project = Project::builder()
        .region("syd", 2)
        .region("lax", 2)
        .build_command("cd hello_ex && MIX_ENV=prod mix release --overwrite --quiet --path ../rel")
        .start(Some("bin/hello_ex start"))
        .build();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello_ex");
    copy_tree(&example, &project.path().join("hello_ex"));

    let deployed = project.deploy("v1");
    deployed.assert_ok();
    assert!(deployed.stderr.contains("made the app's RELEASE_COOKIE"), "{}", deployed.stderr);
    let instances = project.instances();
    assert_eq!(instances.len(), 4);

    // Each instance is a node of its own, named after it; `rpc` reaches it as it is.
    let ids: Vec<String> = instances.iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
    for id in &ids {
        let node = project.ferry(&["exec", "-i", id, "--", "bin/hello_ex rpc 'IO.puts(node())'"]);
        node.assert_ok();
        assert_eq!(node.stdout.trim(), format!("hello-{id}@127.0.0.1"), "{}", node.stderr);
    }
    // One cookie for all: a syd node reaches a lax one.
    let lax = instances.iter().find(|i| i["region"] == "lax").unwrap()["id"].as_str().unwrap().to_string();
    let ping = format!("bin/hello_ex rpc 'IO.puts(Node.ping(:\"hello-{lax}@127.0.0.1\"))'");
    let pinged = project.ferry(&["exec", "-r", "syd", "--", &ping]);
    assert_eq!(pinged.stdout.trim(), "pong", "{}", pinged.stderr);
    // `console` without a command is `bin/hello_ex remote` for that node (its remote
    // shell's own node is named after it; without a terminal IEx stays local, so the
    // attach itself is not seen here).
    let console = project.with_stdin(&["console", "-i", &ids[0]], b"IO.puts(node())\n");
    assert!(console.stdout.contains("Interactive Elixir"), "{}\n{}", console.stdout, console.stderr);
    assert!(console.stdout.contains(&format!("-hello-{}@127.0.0.1", ids[0])), "{}", console.stdout);
    // Its scratch space is its own directory, not the shared release.
    let env = project.ferry(&["exec", "-i", &ids[0], "--", "env"]);
    let tmp = format!("RELEASE_TMP={}", project.path().display());
    assert!(
        env.stdout.lines().any(|l| l.starts_with(&tmp) && l.ends_with(&format!("instances/{}/tmp", ids[0]))),
        "{}",
        env.stdout
    );
    // Through the front door, the nodes answer.
    let (status, body) = common::get(project.port, "/").expect("the front door answers");
    assert_eq!(status, 200);
    assert!(body.starts_with("node hello-"), "{body}");

    // Every host's peers file lists every running node, and follows a scale.
    let peers = |region: &str| -> Vec<String> {
        let run = project.ferry(&["exec", "-r", region, "--", "cat \"$FERRY_PEERS_FILE\""]);
        run.assert_ok();
        run.stdout.lines().map(str::to_string).collect()
    };
    let mut nodes: Vec<String> = ids.iter().map(|id| format!("hello-{id}@127.0.0.1")).collect();
    nodes.sort();
    assert_eq!((peers("syd"), peers("lax")), (nodes.clone(), nodes));
    // The example connects to what the file lists (the README's clustering).
    let connected = || {
        let run = project.ferry(&["exec", "-r", "lax", "--", "bin/hello_ex rpc 'IO.puts(length(Node.list()))'"]);
        run.stdout.trim().to_string()
    };
    common::eventually(std::time::Duration::from_secs(20), || (connected() == "3").then_some(()));
    project.ferry(&["scale", "count", "1", "--region", "lax", "--yes"]).assert_ok();
    let left: Vec<String> = project
        .instances()
        .iter()
        .map(|i| format!("hello-{}@127.0.0.1", i["id"].as_str().unwrap()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(left.len(), 3);
    assert_eq!((peers("syd"), peers("lax")), (left.clone(), left));

    assert!(!running_from("epmd", project.path()).is_empty(), "the nodes' epmd runs");
    project.ferry(&["destroy", "--yes"]).assert_ok();
    common::eventually(std::time::Duration::from_secs(10), || {
        (running_from("epmd", project.path()).is_empty() && running_from("beam.smp", project.path()).is_empty())
            .then_some(())
    });
}
