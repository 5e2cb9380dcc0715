//! ferry's benchmark: ferry, the Ansible peer and the physical floor, side by side on
//! the same real `sshd` hosts in one run. See `bench/README.md`.
//!
//!     cargo bench --bench deploy               # the full run; writes bench/results and BENCHMARKS.md
//!     cargo bench --bench deploy -- --smoke    # 2 hosts, a tiny release: checks it all still works
//!
//! Needs root (the hosts are users of this machine). Installs ansible-core, zstd and
//! GNU time from Debian's packages when they are missing.

// Benchmark arithmetic: byte counts and durations become floats for ratios and medians.
#![allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]

#[path = "../tests/common/sshd.rs"]
mod sshd;

mod figures;
mod load;
mod measure;
mod proxy;
mod tree;

use std::path::{Path, PathBuf};
use std::process::Command;

use sshd::SshFleet;

/// What one run measures.
#[derive(Debug, Clone)]
pub struct Opts {
    /// SSH hosts, split into two regions (the first half is the primary).
    pub hosts: usize,
    /// Times each measurement is repeated (alternating), at least 1.
    pub runs: usize,
    /// Size of the incompressible part of the release.
    pub erts_mib: usize,
    /// How long the app takes to boot before it listens (a realistic app is not instant).
    pub boot_ms: u64,
    /// The local scale test: regions x instances per region.
    pub local_regions: usize,
    pub local_per_region: usize,
    pub smoke: bool,
    /// Only ferry's own runs (no build comparison, peer or floor): to see quickly
    /// where ferry's time goes; nothing is written to BENCHMARKS.md.
    pub only_ferry: bool,
    /// Only figures 8 to 10 (the front door against HAProxy and Caddy, under load
    /// during rollouts, and after its agent is killed); nothing is written to
    /// BENCHMARKS.md.
    pub only_proxy: bool,
    /// Where the results file goes.
    pub results: PathBuf,
}

impl Opts {
    fn parse() -> Opts {
        let repo = repo();
        let mut opts = Opts {
            hosts: 6,
            runs: 3,
            erts_mib: 30,
            boot_ms: 300,
            local_regions: 6,
            local_per_region: 10,
            smoke: false,
            only_ferry: false,
            only_proxy: false,
            results: repo.join("bench/results"),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |name: &str| -> usize {
                args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| usage(&format!("{name} needs a number")))
            };
            match arg.as_str() {
                "--smoke" => {
                    opts = Opts {
                        hosts: 2,
                        runs: 1,
                        erts_mib: 1,
                        boot_ms: 50,
                        local_regions: 2,
                        local_per_region: 2,
                        smoke: true,
                        only_ferry: false,
                        only_proxy: false,
                        results: repo.join("target/bench-smoke"),
                    };
                }
                "--only-proxy" => {
                    opts.only_proxy = true;
                    opts.results = repo.join("target/bench-partial");
                }
                "--only-ferry" => {
                    opts.only_ferry = true;
                    opts.results = repo.join("target/bench-partial");
                }
                "--hosts" => opts.hosts = value("--hosts"),
                "--runs" => opts.runs = value("--runs"),
                "--release-mib" => opts.erts_mib = value("--release-mib"),
                "--boot-ms" => opts.boot_ms = value("--boot-ms") as u64,
                "--local-regions" => opts.local_regions = value("--local-regions"),
                "--local-per-region" => opts.local_per_region = value("--local-per-region"),
                // `cargo bench` passes `--bench` to every bench target.
                "--bench" => {}
                "-h" | "--help" => usage(""),
                other => usage(&format!("unknown argument `{other}`")),
            }
        }
        if opts.hosts < 2 || opts.runs < 1 || opts.local_regions < 2 || opts.local_per_region < 1 {
            usage("needs at least 2 hosts, 1 run, 2 local regions and 1 instance per region");
        }
        opts
    }
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("error: {problem}");
    }
    eprintln!(
        "usage: cargo bench --bench deploy -- [--smoke] [--only-ferry] [--only-proxy] [--hosts N] [--runs N] [--release-mib N] [--boot-ms N] \
         [--local-regions N] [--local-per-region N]"
    );
    std::process::exit(2);
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The ferry binary cargo built for this benchmark (release profile).
pub fn ferry_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferry")
}

fn main() {
    let opts = Opts::parse();
    if !sshd::is_root() {
        eprintln!("error: the benchmark creates its sshd hosts as users of this machine: run it as root");
        std::process::exit(2);
    }
    ensure_tools();
    let work = tempfile::Builder::new().prefix("ferry-bench-").tempdir().expect("a work directory");
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    eprintln!(
        "==> ferry benchmark: {} hosts, {} runs, {} MiB release, app boot {} ms, {} cores",
        opts.hosts, opts.runs, opts.erts_mib, opts.boot_ms, cores
    );

    let tree = tree::make(work.path(), &opts);
    eprintln!("release tree: {} files, {} bytes", tree.files, tree.bytes);

    let mut report = figures::Report::new(&opts, cores, &tree);
    if opts.only_proxy {
        proxy::rollouts(&opts, work.path(), &tree, &mut report);
        proxy::proxy(&opts, work.path(), &tree, &mut report);
        eprintln!("\n{}", report.render());
        return;
    }
    if !opts.only_ferry {
        figures::build(&opts, work.path(), &tree, &mut report);
    }

    let fleet = SshFleet::start(opts.hosts);
    figures::ssh(&opts, work.path(), &tree, &fleet, &mut report);
    drop(fleet);

    figures::local_scale(&opts, work.path(), &tree, &mut report);
    proxy::rollouts(&opts, work.path(), &tree, &mut report);
    proxy::proxy(&opts, work.path(), &tree, &mut report);

    let text = report.render();
    eprintln!("\n{text}");
    std::fs::create_dir_all(&opts.results).expect("results directory");
    let name = if opts.smoke {
        "smoke.txt".to_string()
    } else if opts.only_ferry {
        "partial.txt".to_string()
    } else {
        format!("{}-n{}.txt", today(), opts.hosts)
    };
    let path = opts.results.join(name);
    std::fs::write(&path, &text).expect("results file");
    eprintln!("results: {}", path.display());
    if opts.only_ferry {
        return;
    }
    if !opts.smoke {
        let md = repo().join("BENCHMARKS.md");
        let previous = std::fs::read_to_string(&md).unwrap_or_default();
        std::fs::write(&md, report.markdown(&path, &previous)).expect("BENCHMARKS.md");
        eprintln!("table:   {}", md.display());
    }
    if let Err(problem) = report.sane() {
        eprintln!("error: {problem}");
        std::process::exit(1);
    }
}

/// Today as `YYYY-MM-DD` (UTC), from `date`, for the results file name.
fn today() -> String {
    let out = Command::new("date").args(["-u", "+%Y-%m-%d"]).output().expect("date runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Installs the peer (ansible-core), zstd, GNU time, and the proxies compared with the
/// front door (HAProxy, Caddy) and `wrk` from Debian when missing.
fn ensure_tools() {
    let mut need = Vec::new();
    for (tool, package) in [
        ("/usr/bin/ansible-playbook", "ansible-core"),
        ("/usr/bin/zstd", "zstd"),
        ("/usr/bin/time", "time"),
        ("/usr/bin/scp", "openssh-client"),
        ("/usr/sbin/haproxy", "haproxy"),
        ("/usr/bin/caddy", "caddy"),
        ("/usr/bin/wrk", "wrk"),
    ] {
        if !Path::new(tool).exists() {
            need.push(package);
        }
    }
    if need.is_empty() {
        return;
    }
    eprintln!("installing {} ...", need.join(" "));
    let status = Command::new("sh")
        .arg("-c")
        .arg("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \"$@\" >/dev/null")
        .arg("sh")
        .args(&need)
        .status()
        .expect("apt-get runs");
    if !status.success() {
        eprintln!("error: could not install {}", need.join(" "));
        std::process::exit(1);
    }
}
