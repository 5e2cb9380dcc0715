//! The command line: clap definitions and help text. Parsed arguments are turned into
//! plain [`Invocation`] data here (what the command line overrides goes into
//! [`Overrides`]); clap types never leave this module.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Strategy;
use crate::settings::Overrides;

#[derive(Debug, Parser)]
#[command(name = "ferry", version, about = "Deploy release tarballs to your own machines, region by region, behind health checks", long_about = None)]
struct Args {
    /// Path to fly.toml.
    #[arg(
        short,
        long,
        global = true,
        help_heading = "Global options",
        default_value = "fly.toml",
        value_name = "FILE"
    )]
    config: PathBuf,
    /// One JSON object per line on stdout instead of human output.
    #[arg(long, global = true, help_heading = "Global options")]
    json: bool,
    /// Print nothing but errors.
    #[arg(short, long, global = true, help_heading = "Global options", conflicts_with = "json")]
    quiet: bool,
    /// Trust unknown SSH host keys on first contact (and record them); a changed key is always refused.
    #[arg(long, global = true, help_heading = "Global options")]
    accept_new_host_keys: bool,
    /// ssh_config file to use instead of ~/.ssh/config.
    #[arg(long, global = true, help_heading = "Global options", env = "FERRY_SSH_CONFIG", value_name = "FILE")]
    ssh_config: Option<PathBuf>,
    #[command(subcommand)]
    command: CommandArgs,
}

#[derive(Debug, Subcommand)]
enum CommandArgs {
    /// Build release tarballs.
    #[command(subcommand)]
    Release(ReleaseArgs),
    /// Build (or take) a release, run release_command once, roll it out behind health checks.
    #[command(
        after_help = "Examples:\n  ferry deploy\n  ferry deploy --version v42 --dry-run\n  ferry deploy --release build/app-v42.tar.gz --strategy bluegreen\n  ferry deploy --lock-wait 5m --json"
    )]
    Deploy(DeployArgs),
    /// Roll back to an earlier release still on the hosts (default: the one before the current).
    #[command(
        after_help = "Examples:\n  ferry rollback\n  ferry rollback v41 --dry-run\n  ferry rollback v41 --restore-backup"
    )]
    Rollback(RollbackArgs),
    /// Restart every instance on the current release, one at a time behind its checks
    /// (taking staged secrets and [env] changes); a failure puts the old ones back.
    #[command(
        after_help = "Examples:\n  ferry secrets set API_TOKEN=- --stage && ferry restart\n  ferry restart --wait-timeout 2m"
    )]
    Restart {
        /// How long an instance may take to become healthy.
        #[arg(long, value_parser = duration, value_name = "DURATION")]
        wait_timeout: Option<Duration>,
        /// Wait up to this long for another operation's lock.
        #[arg(long, value_parser = duration, value_name = "DURATION")]
        lock_wait: Option<Duration>,
    },
    /// Run [deploy] release_command once, against a release already on the hosts.
    #[command(after_help = "Examples:\n  ferry migrate\n  ferry migrate --version v42 --backup")]
    Migrate {
        /// Release to run it from (default: the current one).
        #[arg(long)]
        version: Option<String>,
        /// pg_dump the database first (as `[ferry.backup] before_migrate`).
        #[arg(long)]
        backup: bool,
        /// Wait up to this long for another operation's lock.
        #[arg(long, value_parser = duration, value_name = "DURATION")]
        lock_wait: Option<Duration>,
    },
    /// Instances per region: version, state, health, port, pid, uptime.
    #[command(
        after_help = "Examples:\n  ferry status\n  ferry status --json | jq 'select(.instances) | .instances[] | select(.health != \"passing\")'\n  ferry status --watch"
    )]
    Status {
        /// Show it again every 2 seconds (`--json`: one object each time) until Ctrl-C.
        #[arg(short, long)]
        watch: bool,
    },
    /// Release history: version, status, when, by whom, what was current before.
    #[command(
        after_help = "Examples:\n  ferry releases\n  ferry releases --json | jq 'select(.version and .status != \"complete\")'"
    )]
    Releases,
    /// Show instance logs.
    #[command(after_help = "Examples:\n  ferry logs\n  ferry logs -r syd -n 200\n  ferry logs -i 6f28df32 --json")]
    Logs(LogsArgs),
    /// Run a command on an instance's host, in its environment and directory.
    ///
    /// The command gets what the instance got ([env], secrets, PORT and the FLY_*
    /// variables), runs in its directory, streams its output, and ferry exits with its
    /// exit code. One word is read as a start command is (`sh -c` when it needs a shell).
    #[command(
        after_help = "Examples:\n  ferry exec -- env\n  ferry exec -r lax -- bin/hello version\n  ferry exec -i 6f28df32 -- 'ls -l $FERRY_VOLUME_DATA'"
    )]
    Exec {
        #[command(flatten)]
        target: InstanceTarget,
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Check every host the way a deploy uses it, and say what to fix.
    ///
    /// The connection and its host key, the tools there, free disk in the deploy root,
    /// clock skew, port forwarding and the agent. Exits 1 when a check fails.
    #[command(after_help = "Examples:\n  ferry doctor\n  ferry doctor --json")]
    Doctor,
    /// Open a terminal on an instance's host, in its environment: its console, or COMMAND.
    ///
    /// Without COMMAND: `bin/<name> remote` for a BEAM release (attached to the running
    /// node with its name and cookie), else a shell.
    #[command(after_help = "Examples:\n  ferry console\n  ferry console -r lax -- bin/hello remote")]
    Console {
        #[command(flatten)]
        target: InstanceTarget,
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// List, add or remove regions (recorded in fly.toml; instances start or stop at once).
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  ferry regions list\n  ferry regions add lax --count 2\n  ferry regions add fra --host deploy@fra1.example.com\n  ferry regions remove lax --yes"
    )]
    Regions(RegionsArgs),
    /// Change how many instances run.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  ferry scale count 3\n  ferry scale count 1 --region lax --dry-run\n  ferry scale count web=2 worker=1\n  ferry scale count 2 --process-group worker"
    )]
    Scale(ScaleArgs),
    /// Manage secrets: stored on the hosts (0600), given to instances as env, never printed.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  ferry secrets set SECRET_KEY_BASE=-\n  ferry secrets set DATABASE_URL=- < url.txt\n  ferry secrets unset OLD_TOKEN --stage\n  ferry secrets list"
    )]
    Secrets(SecretsArgs),
    /// PostgreSQL backups taken with pg_dump on the release machine.
    #[command(subcommand)]
    Backups(BackupsArgs),
    /// Volumes: storage on one host of a region, mounted by instances through [mounts].
    #[command(subcommand)]
    Volumes(VolumesArgs),
    /// Write a fly.toml for the project in this directory (Mix, Rails, Node, Go, Python, Rust).
    #[command(after_help = "Examples:\n  ferry init\n  ferry init --name shop --region syd")]
    Init {
        /// App name (default: the directory's name).
        #[arg(long)]
        name: Option<String>,
        /// Primary region (default: `local`).
        #[arg(short, long)]
        region: Option<String>,
    },
    /// Create a new app from a template (`postgres`: PostgreSQL with streaming replicas).
    Launch {
        #[arg(long)]
        template: String,
        /// App name.
        #[arg(long)]
        name: String,
        /// Primary region.
        #[arg(short, long)]
        region: String,
        /// Directory to write into (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// PostgreSQL apps deployed by ferry: member status and connection strings.
    #[command(subcommand)]
    Pg(PgArgs),
    /// Inspect or release the deploy lock.
    #[command(subcommand)]
    Lock(LockArgs),
    /// Answer every request with a maintenance page (503), or route again.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  ferry maintenance on --message \"Back at 04:00 UTC\"\n  ferry maintenance off"
    )]
    Maintenance(MaintenanceArgs),
    /// Stop every instance and remove the app from every host (asks first in a
    /// terminal; `--yes` without one).
    Destroy {
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// Check or print the configuration.
    #[command(subcommand)]
    Config(ConfigArgs),
    /// Print a shell completion script (`ferry completions bash > /etc/bash_completion.d/ferry`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print ferry's man page (roff: `ferry man | man -l -`).
    Man,
    /// ferry's agent on a host (run by ferry itself).
    #[command(subcommand, hide = true)]
    Agent(AgentArgs),
}

#[derive(Debug, Subcommand)]
enum AgentArgs {
    /// The resident agent of this account.
    Run {
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
        /// Install the host's boot mechanism for it.
        #[arg(long)]
        boot_entry: bool,
    },
    /// Relay one request on stdin to this account's agent.
    Call,
    /// Become a command in a session of its own (used by the agent).
    Launch,
    /// What the boot mechanism runs: the agent, bringing instances back.
    Boot {
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
    },
    /// Hold the front door's listening sockets for the agent (started by it).
    Keep {
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
    },
    /// Become a command in an instance's environment and directory (`ferry exec`).
    Exec {
        #[arg(long, value_name = "DIR")]
        app_dir: String,
        #[arg(long, value_name = "ID")]
        instance: String,
        /// None: the instance's console (`bin/<name> remote` for a BEAM release, else `sh`).
        #[arg(last = true)]
        argv: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ReleaseArgs {
    /// Run the build command and pack the release directory into a deterministic tar.gz.
    Build {
        /// Release version (default: `git describe --tags --always --dirty`, else a UTC timestamp).
        #[arg(long)]
        version: Option<String>,
        /// Directory for the tarball (default: .ferry/build next to fly.toml).
        #[arg(long, value_name = "DIR")]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct DeployArgs {
    /// Release version to build (default: `git describe --tags --always --dirty`, else a UTC timestamp).
    #[arg(long, conflicts_with = "release")]
    version: Option<String>,
    /// Deploy this prebuilt release tarball instead of building (checked entry by entry;
    /// at most 8 GiB unpacked).
    #[arg(long, value_name = "FILE")]
    release: Option<PathBuf>,
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// On failure, leave already-updated instances on the new version.
    #[arg(long)]
    no_revert: bool,
    /// How long an instance may take to become healthy (default: [deploy] wait_timeout, 5m).
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    wait_timeout: Option<Duration>,
    /// Override [deploy] strategy.
    #[arg(long, value_enum)]
    strategy: Option<StrategyArg>,
    /// Wait up to this long for another deploy's lock instead of failing at once.
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    lock_wait: Option<Duration>,
    /// Do not run [deploy] release_command.
    #[arg(long)]
    skip_release_command: bool,
    /// pg_dump the database before the release_command (as `[ferry.backup] before_migrate`).
    #[arg(long)]
    backup: bool,
}

#[derive(Debug, clap::Args)]
struct RollbackArgs {
    /// Version to return to (default: the release that was current before the current one).
    version: Option<String>,
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// On failure, leave already-updated instances where they are.
    #[arg(long)]
    no_revert: bool,
    /// How long an instance may take to become healthy.
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    wait_timeout: Option<Duration>,
    /// Also restore the database backup taken before the release being rolled back.
    #[arg(long)]
    restore_backup: bool,
    /// Do not ask before restoring the backup.
    #[arg(long)]
    yes: bool,
    /// Roll back to a release none of whose deploys completed (failed or reverted).
    #[arg(long)]
    force: bool,
    /// Wait up to this long for another operation's lock.
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    lock_wait: Option<Duration>,
}

#[derive(Debug, clap::Args)]
struct LogsArgs {
    /// Only this region.
    #[arg(short, long)]
    region: Option<String>,
    /// Only this instance (id or a prefix of it).
    #[arg(short, long)]
    instance: Option<String>,
    /// Lines per instance.
    #[arg(short = 'n', long, default_value_t = 50)]
    lines: usize,
    /// Keep printing lines as they come, from every instance (new ones too), until Ctrl-C.
    #[arg(short, long)]
    follow: bool,
}

#[derive(Debug, Subcommand)]
enum RegionsArgs {
    /// Regions, hosts, count, instances running, versions.
    List,
    /// Add a region; with a deployed release its instances start right away.
    Add {
        /// Region name (e.g. `lax`).
        name: String,
        /// SSH host of the region (`user@host` or `user@host:port`); repeatable.
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        /// Instances in the region (default 1).
        #[arg(long)]
        count: Option<u32>,
    },
    /// Stop a region's instances gracefully and remove it from fly.toml.
    Remove {
        name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// Which instance `exec` and `console` run beside.
#[derive(Debug, clap::Args)]
struct InstanceTarget {
    /// This instance (an id, or a prefix of one no other id shares).
    #[arg(short, long, value_name = "ID", conflicts_with = "region")]
    instance: Option<String>,
    /// A running instance of this region (default: the primary region).
    #[arg(short, long, value_name = "REGION")]
    region: Option<String>,
}

#[derive(Debug, Subcommand)]
enum ScaleArgs {
    /// Set the instance count of every region, or of one with `--region`.
    ///
    /// `N` sets `count` (every process group `counts` does not name); `GROUP=N`, or `N`
    /// with `--process-group GROUP`, sets that group's.
    Count {
        #[arg(required = true, value_parser = group_count, value_name = "N|GROUP=N")]
        counts: Vec<(Option<String>, u32)>,
        /// The process group a bare `N` is for.
        #[arg(short = 'g', long, value_name = "GROUP")]
        process_group: Option<String>,
        /// Only this region.
        #[arg(short, long)]
        region: Option<String>,
        /// Do not ask for confirmation before stopping instances.
        #[arg(long)]
        yes: bool,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SecretsArgs {
    /// Set secrets; restarts instances unless `--stage`.
    ///
    /// `KEY=-` prompts for the value without echoing it, or reads it exactly from a piped
    /// stdin (one key). `KEY=VALUE` works too, with a warning: `ps` and shell history see it.
    Set {
        #[arg(required = true, value_name = "KEY=-")]
        pairs: Vec<String>,
        /// Store only; instances get the values at the next deploy or `ferry restart`.
        #[arg(long)]
        stage: bool,
    },
    /// Remove secrets; restarts instances unless `--stage`.
    Unset {
        #[arg(required = true)]
        keys: Vec<String>,
        #[arg(long)]
        stage: bool,
    },
    /// Names and short digests, never values.
    List,
}

#[derive(Debug, Subcommand)]
enum BackupsArgs {
    /// Backups: id, when, database (no password), size, releases before and after.
    List,
    /// Take a backup now.
    Create,
    /// Restore a backup over the database (pg_restore --clean --if-exists --single-transaction).
    Restore {
        id: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
enum VolumesArgs {
    /// Create a volume on a host of a region (checked against the free space there).
    Create {
        name: String,
        #[arg(short, long)]
        region: String,
        /// Size in GB.
        #[arg(long)]
        size: u64,
        /// The host (default: the region's host with the fewest volumes).
        #[arg(long)]
        host: Option<String>,
    },
    /// Volumes: id, name, region, size, host, attached instance.
    List,
    /// Destroy a volume and its data (refused while an instance holds it).
    Destroy {
        id: String,
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PgArgs {
    /// Each member's role, region, LSN, replication lag (bytes and seconds), streaming state.
    Status,
    /// The connection string apps in a region should read from, and the primary's for writes.
    ConnectUrl {
        #[arg(short, long)]
        region: String,
    },
}

#[derive(Debug, Subcommand)]
enum LockArgs {
    /// Who holds the lock on each host, and whether it is stale.
    Status,
    /// Remove the lock from every host (only when its holder is surely gone).
    Release,
}

#[derive(Debug, Subcommand)]
enum MaintenanceArgs {
    /// Every front door answers 503 with a page (instances keep running; requests with
    /// a `Ferry-Preview` header still reach them).
    On {
        /// What the page says.
        #[arg(long, value_name = "TEXT")]
        message: Option<String>,
    },
    /// The front doors route to the instances again.
    Off,
}

#[derive(Debug, Subcommand)]
enum ConfigArgs {
    /// Check fly.toml: exit 0 with warnings listed, 2 with the located error.
    Validate,
    /// Print the resolved configuration (durations in milliseconds).
    Show,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StrategyArg {
    Rolling,
    Immediate,
    Canary,
    Bluegreen,
}

/// `3` or `worker=3`.
fn group_count(text: &str) -> Result<(Option<String>, u32), String> {
    let (group, n) = match text.split_once('=') {
        Some((group, n)) if !group.trim().is_empty() => (Some(group.trim().to_string()), n),
        Some(_) => return Err(format!("`{text}`: name the process group before `=`")),
        None => (None, text),
    };
    let n = n.trim().parse::<u32>().map_err(|_| format!("`{text}`: the count must be a whole number, such as 2"))?;
    Ok((group, n))
}

fn duration(text: &str) -> Result<Duration, String> {
    crate::config::parse_duration(text)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    Human,
    Json,
    Quiet,
}

#[derive(Debug)]
pub enum Command {
    Init {
        name: Option<String>,
        region: Option<String>,
    },
    Doctor,
    /// `exec` (`tty: false`) and `console`.
    Exec {
        instance: Option<String>,
        region: Option<String>,
        command: Vec<String>,
        tty: bool,
    },
    ReleaseBuild {
        version: Option<String>,
        output: Option<PathBuf>,
    },
    Deploy {
        version: Option<String>,
        release: Option<PathBuf>,
        dry_run: bool,
    },
    Restart,
    Rollback {
        version: Option<String>,
        dry_run: bool,
        restore_backup: bool,
        yes: bool,
        force: bool,
    },
    Migrate {
        version: Option<String>,
    },
    Status {
        watch: bool,
    },
    Releases,
    Logs {
        region: Option<String>,
        instance: Option<String>,
        lines: usize,
        follow: bool,
    },
    RegionsList,
    RegionsAdd {
        name: String,
        hosts: Vec<String>,
        count: Option<u32>,
    },
    RegionsRemove {
        name: String,
        yes: bool,
    },
    Scale {
        counts: Vec<(Option<String>, u32)>,
        region: Option<String>,
        yes: bool,
        dry_run: bool,
    },
    SecretsSet {
        pairs: Vec<String>,
        stage: bool,
    },
    SecretsUnset {
        keys: Vec<String>,
        stage: bool,
    },
    SecretsList,
    BackupsList,
    BackupsCreate,
    BackupsRestore {
        id: String,
        yes: bool,
    },
    VolumesCreate {
        name: String,
        region: String,
        size: u64,
        host: Option<String>,
    },
    VolumesList,
    VolumesDestroy {
        id: String,
        yes: bool,
    },
    Launch {
        template: String,
        name: String,
        region: String,
        dir: Option<PathBuf>,
    },
    PgStatus,
    PgConnectUrl {
        region: String,
    },
    LockStatus,
    LockRelease,
    /// `Some(message)`: on; `None`: off.
    Maintenance {
        on: Option<String>,
    },
    Destroy {
        yes: bool,
    },
    ConfigValidate,
    ConfigShow,
    Agent(crate::agent::Role),
}

#[derive(Debug)]
pub struct Invocation {
    pub config: PathBuf,
    pub accept_new_host_keys: bool,
    pub ssh_config: Option<PathBuf>,
    pub output: OutputMode,
    /// What the command's flags override of fly.toml.
    pub overrides: Overrides,
    pub command: Command,
}

/// Writes what `completions` and `man` print; `None` for every other command.
fn print_self_description(command: &CommandArgs) -> Option<std::io::Result<()>> {
    use clap::CommandFactory as _;
    let mut cli = Args::command();
    let mut out = std::io::stdout().lock();
    match command {
        CommandArgs::Completions { shell } => {
            use clap_complete::Generator as _;
            cli.set_bin_name("ferry");
            cli.build();
            Some(shell.try_generate(&cli, &mut out))
        }
        CommandArgs::Man => Some(clap_mangen::Man::new(cli).render(&mut out)),
        _ => None,
    }
}

/// Parses the process arguments (clap exits with code 2 on usage errors).
pub fn parse() -> Invocation {
    let args = Args::try_parse().unwrap_or_else(|e| {
        // A usage error under `--json` still ends the output with an `error` line.
        if e.use_stderr() && std::env::args().any(|a| a == "--json") {
            let text = e.render().to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let message = message.join(" ").trim_start_matches("error: ").to_string();
            let line = serde_json::json!({ "event": "error", "message": message, "hint": null, "exit_code": 2 });
            println!("{line}");
        }
        e.exit()
    });
    let output = match (args.json, args.quiet) {
        (true, _) => OutputMode::Json,
        (_, true) => OutputMode::Quiet,
        _ => OutputMode::Human,
    };
    if let Some(printed) = print_self_description(&args.command) {
        // A closed pipe (`| head`) is not an error here.
        std::process::exit(i32::from(printed.is_err_and(|e| e.kind() != std::io::ErrorKind::BrokenPipe)));
    }
    let mut overrides = Overrides::default();
    let command = match args.command {
        CommandArgs::Release(ReleaseArgs::Build { version, output }) => Command::ReleaseBuild { version, output },
        CommandArgs::Deploy(d) => {
            overrides = Overrides {
                wait_timeout: d.wait_timeout,
                strategy: d.strategy.map(|s| match s {
                    StrategyArg::Rolling => Strategy::Rolling,
                    StrategyArg::Immediate => Strategy::Immediate,
                    StrategyArg::Canary => Strategy::Canary,
                    StrategyArg::Bluegreen => Strategy::Bluegreen,
                }),
                no_revert: d.no_revert,
                lock_wait: d.lock_wait,
                backup: d.backup,
                skip_release_command: d.skip_release_command,
            };
            Command::Deploy { version: d.version, release: d.release, dry_run: d.dry_run }
        }
        CommandArgs::Rollback(r) => {
            overrides = Overrides {
                wait_timeout: r.wait_timeout,
                no_revert: r.no_revert,
                lock_wait: r.lock_wait,
                ..Overrides::default()
            };
            Command::Rollback {
                version: r.version,
                dry_run: r.dry_run,
                restore_backup: r.restore_backup,
                yes: r.yes,
                force: r.force,
            }
        }
        CommandArgs::Restart { wait_timeout, lock_wait } => {
            overrides = Overrides { wait_timeout, lock_wait, ..Overrides::default() };
            Command::Restart
        }
        CommandArgs::Migrate { version, backup, lock_wait } => {
            overrides = Overrides { lock_wait, backup, ..Overrides::default() };
            Command::Migrate { version }
        }
        CommandArgs::Status { watch } => Command::Status { watch },
        CommandArgs::Releases => Command::Releases,
        CommandArgs::Init { name, region } => Command::Init { name, region },
        CommandArgs::Doctor => Command::Doctor,
        CommandArgs::Exec { target, command } => {
            Command::Exec { instance: target.instance, region: target.region, command, tty: false }
        }
        CommandArgs::Console { target, command } => Command::Exec {
            instance: target.instance,
            region: target.region,
            // Empty: the host opens the instance's console.
            command,
            tty: true,
        },
        CommandArgs::Logs(l) => {
            Command::Logs { region: l.region, instance: l.instance, lines: l.lines, follow: l.follow }
        }
        CommandArgs::Regions(RegionsArgs::List) => Command::RegionsList,
        CommandArgs::Regions(RegionsArgs::Add { name, hosts, count }) => Command::RegionsAdd { name, hosts, count },
        CommandArgs::Regions(RegionsArgs::Remove { name, yes }) => Command::RegionsRemove { name, yes },
        CommandArgs::Scale(ScaleArgs::Count { counts, process_group, region, yes, dry_run }) => {
            let counts = counts.into_iter().map(|(group, n)| (group.or_else(|| process_group.clone()), n)).collect();
            Command::Scale { counts, region, yes, dry_run }
        }
        CommandArgs::Secrets(SecretsArgs::Set { pairs, stage }) => Command::SecretsSet { pairs, stage },
        CommandArgs::Secrets(SecretsArgs::Unset { keys, stage }) => Command::SecretsUnset { keys, stage },
        CommandArgs::Secrets(SecretsArgs::List) => Command::SecretsList,
        CommandArgs::Backups(BackupsArgs::List) => Command::BackupsList,
        CommandArgs::Backups(BackupsArgs::Create) => Command::BackupsCreate,
        CommandArgs::Backups(BackupsArgs::Restore { id, yes }) => Command::BackupsRestore { id, yes },
        CommandArgs::Volumes(VolumesArgs::Create { name, region, size, host }) => {
            Command::VolumesCreate { name, region, size, host }
        }
        CommandArgs::Volumes(VolumesArgs::List) => Command::VolumesList,
        CommandArgs::Volumes(VolumesArgs::Destroy { id, yes }) => Command::VolumesDestroy { id, yes },
        CommandArgs::Launch { template, name, region, dir } => Command::Launch { template, name, region, dir },
        CommandArgs::Pg(PgArgs::Status) => Command::PgStatus,
        CommandArgs::Pg(PgArgs::ConnectUrl { region }) => Command::PgConnectUrl { region },
        CommandArgs::Lock(LockArgs::Status) => Command::LockStatus,
        CommandArgs::Lock(LockArgs::Release) => Command::LockRelease,
        CommandArgs::Maintenance(MaintenanceArgs::On { message }) => Command::Maintenance {
            on: Some(message.unwrap_or_else(|| crate::commands::maintenance::DEFAULT_MESSAGE.to_string())),
        },
        CommandArgs::Maintenance(MaintenanceArgs::Off) => Command::Maintenance { on: None },
        CommandArgs::Destroy { yes } => Command::Destroy { yes },
        CommandArgs::Config(ConfigArgs::Validate) => Command::ConfigValidate,
        CommandArgs::Config(ConfigArgs::Show) => Command::ConfigShow,
        CommandArgs::Completions { .. } | CommandArgs::Man => unreachable!("printed above"),
        CommandArgs::Agent(AgentArgs::Run { state, boot_entry }) => {
            Command::Agent(crate::agent::Role::Run { state, boot_entry })
        }
        CommandArgs::Agent(AgentArgs::Call) => Command::Agent(crate::agent::Role::Call),
        CommandArgs::Agent(AgentArgs::Launch) => Command::Agent(crate::agent::Role::Launch),
        CommandArgs::Agent(AgentArgs::Boot { state }) => Command::Agent(crate::agent::Role::Boot { state }),
        CommandArgs::Agent(AgentArgs::Keep { state }) => Command::Agent(crate::agent::Role::Keep { state }),
        CommandArgs::Agent(AgentArgs::Exec { app_dir, instance, argv }) => {
            Command::Agent(crate::agent::Role::Exec { app_dir, instance, argv })
        }
    };
    Invocation {
        config: args.config,
        accept_new_host_keys: args.accept_new_host_keys,
        ssh_config: args.ssh_config,
        output,
        overrides,
        command,
    }
}
