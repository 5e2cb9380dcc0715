//! Volumes and [mounts] on the local target, through the real binary.

mod common;

use common::Project;

/// One instance in syd that appends its version to `boots` in its volume at every
/// start, so the file tells the volume's whole history.
fn project_with_mount() -> Project {
    Project::builder()
        .region("syd", 1)
        .toml("[mounts]\n  source = \"data\"\n  destination = \"/data\"")
        .start(Some("echo \"$RELEASE_VERSION\" >> \"$FERRY_VOLUME_DATA/boots\"; exec bin/hello"))
        .build()
}

fn boots(project: &Project) -> String {
    let list = project.ferry(&["volumes", "list", "--json"]);
    let volumes = serde_json::Value::Array(list.rows());
    let id = volumes[0]["id"].as_str().unwrap();
    std::fs::read_to_string(project.path().join(format!(".ferry/local/syd/local/hello/volumes/{id}/data/boots")))
        .unwrap_or_default()
}

#[test]
fn volume_data_survives_deploys_rollbacks_restarts_and_scaling() {
    let project = project_with_mount();
    let run = project.deploy("v1");
    assert_eq!(run.code, 1, "no volume yet: {}", run.stderr);
    assert!(
        run.stderr.contains("ferry volumes create data --region syd --size 1"),
        "names the command: {}",
        run.stderr
    );
    assert!(project.instances().is_empty(), "nothing started");

    project.ferry(&["volumes", "create", "data", "--region", "syd", "--size", "1"]).assert_ok();
    project.deploy("v1").assert_ok();
    project.deploy("v2").assert_ok();
    project.ferry(&["rollback"]).assert_ok();
    project.ferry(&["secrets", "set", "K=v"]).assert_ok();
    assert_eq!(boots(&project), "v1\nv2\nv1\nv1\n", "one volume, bound to the instance throughout");
    let id = project.instances()[0]["id"].as_str().unwrap().to_string();
    let link = project.path().join(format!(".ferry/local/syd/local/hello/instances/{id}/mounts/_data"));
    assert!(link.join("boots").exists(), "the volume is linked in the instance directory");

    project.ferry(&["scale", "count", "0", "--yes"]).assert_ok();
    let list: serde_json::Value = serde_json::Value::Array(project.ferry(&["volumes", "list", "--json"]).rows());
    assert_eq!(list[0]["attached"], serde_json::Value::Null, "freed when its instance went");
    project.ferry(&["scale", "count", "1"]).assert_ok();
    assert_eq!(boots(&project), "v1\nv2\nv1\nv1\nv1\n", "the new instance got the same data back");
}

#[test]
fn scaling_without_a_free_volume_changes_nothing_and_names_the_command() {
    let project = project_with_mount();
    project.ferry(&["volumes", "create", "data", "--region", "syd", "--size", "2"]).assert_ok();
    project.deploy("v1").assert_ok();
    let before = std::fs::read_to_string(project.path().join("fly.toml")).unwrap();
    let run = project.ferry(&["scale", "count", "2"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("`ferry volumes create data --region syd --size 2`"), "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(project.path().join("fly.toml")).unwrap(), before, "fly.toml untouched");
    assert_eq!(project.instances().len(), 1);
    project.ferry(&["volumes", "create", "data", "--region", "syd", "--size", "2"]).assert_ok();
    project.ferry(&["scale", "count", "2"]).assert_ok();
    assert_eq!(project.versions_served(), ["v1", "v1"]);
}

#[test]
fn volumes_too_large_or_attached_are_refused() {
    let project = project_with_mount();
    let huge = project.ferry(&["volumes", "create", "data", "--region", "syd", "--size", "100000000"]);
    assert_eq!(huge.code, 1, "{}", huge.stderr);
    assert!(huge.stderr.contains("does not fit") && huge.stderr.contains("GB free"), "{}", huge.stderr);
    assert!(project.ferry(&["volumes", "list", "--json"]).rows().is_empty(), "nothing created");

    project.ferry(&["volumes", "create", "data", "--region", "syd", "--size", "1"]).assert_ok();
    project.deploy("v1").assert_ok();
    let list: serde_json::Value = serde_json::Value::Array(project.ferry(&["volumes", "list", "--json"]).rows());
    let id = list[0]["id"].as_str().unwrap().to_string();
    let attached = project.ferry(&["volumes", "destroy", &id, "--yes"]);
    assert_eq!(attached.code, 2, "{}", attached.stderr);
    assert!(attached.stderr.contains("attached"), "{}", attached.stderr);
    project.ferry(&["scale", "count", "0", "--yes"]).assert_ok();
    project.ferry(&["volumes", "destroy", &id, "--yes"]).assert_ok();
    assert!(project.ferry(&["volumes", "list", "--json"]).rows().is_empty());
}
