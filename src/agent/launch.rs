//! `ferry agent launch`: what runs between the agent and a command it starts (an
//! instance, a release_command). In a new session and process group of its own, with
//! an empty signal mask, from the directory it is given, it becomes the command
//! (`exec`): the pid the agent recorded is the command's own.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Never returns when the command starts; 127 when it cannot.
pub fn run() -> i32 {
    let cwd = std::env::var_os("FERRY_LAUNCH_CWD").unwrap_or_else(|| ".".into());
    let argv: Vec<String> =
        std::env::var("FERRY_LAUNCH_ARGV").ok().and_then(|a| serde_json::from_str(&a).ok()).unwrap_or_default();
    let Some((program, rest)) = argv.split_first() else {
        eprintln!("ferry: nothing to start (empty start command)");
        return 127;
    };
    let _ = rustix::process::setsid();
    super::clear_signal_mask();
    // The limit on open files the agent started with (it raised its own).
    if let Some(soft) = std::env::var("FERRY_LAUNCH_NOFILE").ok().filter(|s| !s.is_empty()) {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let limit = getrlimit(Resource::Nofile);
        let current = if soft == "unlimited" { None } else { soft.parse().ok() };
        if current.is_some() || soft == "unlimited" {
            let _ = setrlimit(Resource::Nofile, Rlimit { current, maximum: limit.maximum });
        }
    }
    let error = Command::new(program)
        .args(rest)
        .current_dir(&cwd)
        .env_remove("FERRY_LAUNCH_CWD")
        .env_remove("FERRY_LAUNCH_ARGV")
        .env_remove("FERRY_LAUNCH_NOFILE")
        .exec();
    eprintln!("ferry: cannot start `{program}`: {error}");
    127
}

/// `ferry agent exec`: becomes `argv` in the environment and directory of instance
/// `id` of the app in `app_dir` (its `[env]`, secrets and ferry's variables, as its
/// process got them), with this process's terminal and streams. One word is read as a
/// start command is (through `sh -c` when it needs a shell). Never returns when the
/// command starts; 127 when it cannot, 1 when there is no such instance.
pub fn exec_in(app_dir: &str, id: &str, argv: &[String]) -> i32 {
    let app = super::files::App::new(super::paths::expand_home(app_dir));
    let Some(spec) = super::supervisor::read_spec(&app, id) else {
        eprintln!("ferry: no instance {id} on this host");
        return 1;
    };
    let dir = app.instance(id);
    let secrets = spec.secrets.clone().unwrap_or_else(|| app.secrets_snapshot());
    let mut env = super::supervisor::instance_env(&spec.launch, &secrets.values(), &dir.join("tmp"), &spec.record);
    super::supervisor::beam_env(&app.release(&spec.record.version), &dir, &spec.record, &mut env);
    let argv = match argv {
        [] => default_console(&app.release(&spec.record.version)),
        [one] => super::supervisor::argv(one),
        many => many.to_vec(),
    };
    let Some((program, rest)) = argv.split_first() else {
        eprintln!("ferry: nothing to run");
        return 127;
    };
    let root = dir.join("root");
    let error = Command::new(program).args(rest).current_dir(&root).env_clear().envs(&env).exec();
    eprintln!("ferry: cannot run `{program}` in {}: {error}", root.display());
    127
}

/// What `ferry console` opens without a command: a BEAM release's remote shell
/// (`bin/<name> remote`, its name from `releases/<vsn>/<name>.rel`), else `sh`.
fn default_console(release: &std::path::Path) -> Vec<String> {
    let vsn = std::fs::read_to_string(release.join("releases").join("start_erl.data"))
        .ok()
        .and_then(|data| data.split_whitespace().nth(1).map(str::to_string));
    let name = vsn.and_then(|vsn| {
        std::fs::read_dir(release.join("releases").join(vsn)).ok()?.flatten().find_map(|entry| {
            let file = entry.file_name().to_string_lossy().to_string();
            let name = file.strip_suffix(".rel")?.to_string();
            release.join("bin").join(&name).is_file().then_some(name)
        })
    });
    match name {
        Some(name) => vec![format!("bin/{name}"), "remote".into()],
        None => vec!["sh".into()],
    }
}
