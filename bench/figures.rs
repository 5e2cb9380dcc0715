//! The seven figures: each measured `runs` times, ferry alternating with what it is
//! compared to, and the report (a results text file and the BENCHMARKS.md table).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::measure::{self, median, secs, FerryRun};
use crate::sshd::SshFleet;
use crate::tree::Tree;
use crate::Opts;

/// The line in BENCHMARKS.md after which the text is kept from run to run.
const NOTES: &str = "<!-- notes: everything below is kept when the benchmark rewrites this file -->";

/// Region names for the two SSH regions and the local scale test; the first is primary.
const REGIONS: [&str; 10] = ["syd", "lax", "ams", "nrt", "gru", "jnb", "fra", "sin", "ord", "cdg"];

#[derive(Default)]
pub struct Report {
    header: String,
    runs: String,
    build_ferry: Vec<f64>,
    build_czf: Vec<f64>,
    build_zstd: Vec<f64>,
    size_ferry: u64,
    size_czf: u64,
    size_zstd: u64,
    deploy_ferry: Vec<f64>,
    deploy_peer: Vec<f64>,
    deploy_floor: Vec<f64>,
    deploy_scp: Vec<f64>,
    deploy_default: Vec<f64>,
    redeploy_wall: Vec<f64>,
    redeploy_bytes: Vec<u64>,
    rollback_ferry: Vec<f64>,
    rollback_floor: Vec<f64>,
    health_ms: Vec<f64>,
    ready_ms: Vec<f64>,
    health_missing: usize,
    scale_ferry: Vec<f64>,
    scale_floor: Vec<f64>,
    rss_deploy_kib: Vec<u64>,
    rss_scale_kib: Vec<u64>,
    hosts: usize,
    scale_instances: usize,
    scale_regions: usize,
    /// By proxy (`proxy::NAMES`): each run's `wrk` at 64 and at 4 connections.
    pub proxy: [Vec<(crate::proxy::Wrk, crate::proxy::Wrk)>; 4],
    /// The agent's and the keeper's RSS with the connections open, KiB.
    pub proxy_rss_kib: Option<(u64, u64)>,
    /// Figure 9: the load with nothing happening, and during each rollout.
    pub steady: Option<crate::load::Seen>,
    /// Figure 10: after the agent is killed, ms to the first answer, and connections
    /// refused meanwhile.
    pub kill_gaps: Vec<(f64, u64)>,
    pub rollouts: Vec<(String, crate::load::Seen)>,
    proxy_connections: usize,
}

impl Report {
    pub fn new(opts: &Opts, cores: usize, tree: &Tree) -> Report {
        let commit = Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(crate::repo())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let header = format!(
            "ferry benchmark{}\ncommit {commit}, {cores} cores, {} runs each (alternating), medians\n\
             release tree: {} files, {:.1} MiB ({} MiB incompressible); app boot {} ms\n\
             ssh: {} sshd hosts on loopback, regions {} (primary) and {}, one instance per host\n\
             local: {} regions x {} instances\n",
            if opts.smoke { " (smoke: checks that it runs; the numbers mean nothing)" } else { "" },
            opts.runs,
            tree.files,
            tree.bytes as f64 / 1_048_576.0,
            opts.erts_mib,
            opts.boot_ms,
            opts.hosts,
            REGIONS[0],
            REGIONS[1],
            opts.local_regions,
            opts.local_per_region,
        );
        Report {
            header,
            hosts: opts.hosts,
            scale_instances: opts.local_regions * opts.local_per_region,
            scale_regions: opts.local_regions,
            proxy_connections: if opts.smoke { 100 } else { 1000 },
            ..Report::default()
        }
    }

    pub fn log(&mut self, line: &str) {
        eprintln!("  {line}");
        self.runs.push_str(line);
        self.runs.push('\n');
    }
}

/// ferry's settings for the figures that compare it with the floor and the peer: both
/// count an instance done at its first 200, so ferry's `min_healthy_time` (the second it
/// keeps watching a new instance, by default) is off there and measured on its own.
pub const SAME_WORK: &str = "\n[ferry.deploy]\n  min_healthy_time = \"0s\"\n";

/// A project directory with a fly.toml; `regions` are `(name, hosts, count)`; `extra`
/// is appended before the regions.
pub fn project(
    dir: &Path,
    tree: &Tree,
    target: &str,
    env: &str,
    extra: &str,
    regions: &[(&str, Vec<String>, usize)],
) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    // Each project's front door on a port of its own (SSH hosts: at their own address,
    // on that port instead of 80, which their users may not listen on).
    let port = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port();
    let mut toml = format!(
        "app = \"hello\"\nprimary_region = \"{}\"\nkill_signal = \"SIGTERM\"\nkill_timeout = \"5s\"\n\n\
         [deploy]\n  strategy = \"rolling\"\n  max_unavailable = 1\n  wait_timeout = \"60s\"\n\n\
         [env]\n{env}\n\
         [http_service]\n  internal_port = {port}\n\n  [[http_service.checks]]\n    grace_period = \"1s\"\n    \
         interval = \"15s\"\n    timeout = \"2s\"\n    method = \"GET\"\n    path = \"/health\"\n\n\
         [ferry]\n  target = \"{target}\"\n  keep_releases = 5\n\n\
         [ferry.proxy]\n  bind = \"host\"\n  [ferry.proxy.ports]\n    80 = {port}\n\n\
         [ferry.build]\n  path = \"{}\"\n  start = \"bin/start\"\n{extra}",
        regions[0].0,
        tree.dir.display()
    );
    for (name, hosts, count) in regions {
        let _ = write!(toml, "\n[ferry.regions.{name}]\n  count = {count}\n");
        if !hosts.is_empty() {
            let list: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
            let _ = writeln!(toml, "  hosts = [{}]", list.join(", "));
        }
    }
    fs::write(dir.join("fly.toml"), toml).unwrap();
    dir.to_owned()
}

/// Figure 4: `ferry release build` against `tar czf` and `tar -I zstd` on the same tree.
pub fn build(opts: &Opts, work: &Path, tree: &Tree, report: &mut Report) {
    eprintln!("==> 4. release build");
    let dir = project(&work.join("build"), tree, "local", "", SAME_WORK, &[(REGIONS[0], Vec::new(), 1)]);
    let out = work.join("build/out");
    fs::create_dir_all(&out).unwrap();
    for run in 1..=opts.runs {
        let mut order = ["ferry", "czf", "zstd"];
        order.rotate_left(run % 3);
        for tool in order {
            match tool {
                "ferry" => {
                    let version = format!("b{run}");
                    let r = measure::ferry(
                        &dir,
                        &["release", "build", "--version", &version, "--output", out.to_str().unwrap()],
                        &[],
                    );
                    let size = r
                        .events
                        .iter()
                        .rev()
                        .find_map(|(_, e)| e["size"].as_u64())
                        .expect("release build prints its size");
                    report.size_ferry = size;
                    report.build_ferry.push(secs(r.wall));
                    report.log(&format!("build run {run}: ferry {:.3} s, {size} bytes", secs(r.wall)));
                }
                "czf" => {
                    let file = out.join("tree.tar.gz");
                    let wall =
                        measure::timed(Command::new("tar").arg("czf").arg(&file).arg("-C").arg(&tree.dir).arg("."));
                    report.size_czf = fs::metadata(&file).unwrap().len();
                    report.build_czf.push(secs(wall));
                    report.log(&format!("build run {run}: tar czf {:.3} s, {} bytes", secs(wall), report.size_czf));
                }
                _ => {
                    let file = out.join("tree.tar.zst");
                    let wall = measure::timed(
                        Command::new("tar").args(["-I", "zstd", "-cf"]).arg(&file).arg("-C").arg(&tree.dir).arg("."),
                    );
                    report.size_zstd = fs::metadata(&file).unwrap().len();
                    report.build_zstd.push(secs(wall));
                    report.log(&format!(
                        "build run {run}: tar -I zstd {:.3} s, {} bytes",
                        secs(wall),
                        report.size_zstd
                    ));
                }
            }
        }
    }
}

/// The Ansible peer's files: config (pipelining, ControlPersist, strict host keys
/// through the fleet's client config) and inventory.
fn peer(work: &Path, fleet: &SshFleet, split: usize) -> (PathBuf, Vec<(String, String)>) {
    let dir = work.join("peer");
    fs::create_dir_all(dir.join("cp")).unwrap();
    let cfg = format!(
        "[defaults]\ninventory = {inv}\nhost_key_checking = True\ninterpreter_python = /usr/bin/python3\n\
         gathering = explicit\nretry_files_enabled = False\nforks = 10\n\n\
         [ssh_connection]\npipelining = True\nssh_args = -F {ssh} -o ControlMaster=auto -o ControlPersist=60s\n\
         control_path_dir = {cp}\n",
        inv = dir.join("inventory.ini").display(),
        ssh = fleet.ssh_config().display(),
        cp = dir.join("cp").display(),
    );
    fs::write(dir.join("ansible.cfg"), cfg).unwrap();
    let mut inventory = String::new();
    for (i, host) in fleet.hosts().iter().enumerate() {
        if i == 0 || i == split {
            let _ = writeln!(inventory, "\n[{}]", if i == 0 { REGIONS[0] } else { REGIONS[1] });
        }
        let _ = writeln!(
            inventory,
            "{} ansible_host={} ansible_port={} ansible_user={} app_dir={} app_port={}",
            host.name,
            host.addr,
            host.port,
            host.user,
            host.home.join("peer").display(),
            measure::free_port()
        );
    }
    fs::write(dir.join("inventory.ini"), inventory).unwrap();
    let env = vec![
        ("ANSIBLE_CONFIG".to_string(), dir.join("ansible.cfg").display().to_string()),
        ("ANSIBLE_HOME".to_string(), dir.join("home").display().to_string()),
        ("ANSIBLE_LOCAL_TEMP".to_string(), dir.join("tmp").display().to_string()),
    ];
    (dir, env)
}

fn ansible(env: &[(String, String)], version: &str, release: &Path) -> Duration {
    let playbook = crate::repo().join("bench/peer/deploy.yml");
    measure::timed(
        Command::new("ansible-playbook")
            .arg(&playbook)
            .arg("-e")
            .arg(format!("version={version}"))
            .arg("-e")
            .arg(format!("release_file={}", release.display()))
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
    )
}

/// Builds `v0..=v{runs}` of the tree once, for every deploy that follows.
fn releases(opts: &Opts, dir: &Path, work: &Path) -> Vec<(String, PathBuf)> {
    let out = work.join("releases");
    (0..=opts.runs)
        .map(|i| {
            let version = format!("v{i}");
            let r = measure::ferry(
                dir,
                &["release", "build", "--version", &version, "--output", out.to_str().unwrap()],
                &[],
            );
            let path = r.events.iter().rev().find_map(|(_, e)| e["path"].as_str().map(PathBuf::from)).expect("a path");
            (version, path)
        })
        .collect()
}

/// The sum of `n` start-to-healthy times of the app unpacked in `dir`.
fn serial_path(dir: &Path, n: usize) -> f64 {
    (0..n).map(|_| secs(measure::start_to_healthy(dir))).sum()
}

fn unpack(release: &Path, dir: &Path) {
    if !dir.exists() {
        fs::create_dir_all(dir).unwrap();
        measure::timed(Command::new("tar").arg("-xzf").arg(release).arg("-C").arg(dir));
    }
}

/// Figures 1, 2, 3, 5 and the first half of 7, on the SSH fleet.
pub fn ssh(opts: &Opts, work: &Path, tree: &Tree, fleet: &SshFleet, report: &mut Report) {
    let split = opts.hosts.div_ceil(2);
    let specs: Vec<String> = fleet.hosts().iter().map(crate::sshd::SshHost::spec).collect();
    let regions =
        [(REGIONS[0], specs[..split].to_vec(), split), (REGIONS[1], specs[split..].to_vec(), opts.hosts - split)];
    let dir = project(&work.join("ssh"), tree, "ssh", "  BENCH_FIRST_OK = \"1\"\n", SAME_WORK, &regions);
    // The same app and hosts with ferry's defaults: a deploy as users get it.
    let defaults = project(&work.join("ssh-defaults"), tree, "ssh", "  BENCH_FIRST_OK = \"1\"\n", "", &regions);
    let ssh_config = fleet.ssh_config().display().to_string();
    let env = [("FERRY_SSH_CONFIG", ssh_config.as_str())];
    let (_, peer_env) = peer(work, fleet, split);

    eprintln!("==> building releases v0..v{}", opts.runs);
    let releases = releases(opts, &dir, work);
    let release_bytes = fs::metadata(&releases[0].1).unwrap().len();
    let _ = writeln!(report.header, "release tar.gz: {:.1} MiB", release_bytes as f64 / 1_048_576.0);

    eprintln!("==> warm-up: first deploy of v0 (ferry and peer)");
    let v0 = releases[0].1.to_str().unwrap();
    measure::ferry(&dir, &["deploy", "--release", v0], &env);
    if !opts.only_ferry {
        ansible(&peer_env, &releases[0].0, &releases[0].1);
    }

    if std::env::var_os("FERRY_BENCH_HOLD").is_some() {
        // For looking closer by hand: the fleet stays up until stdin closes.
        eprintln!("holding: cd {} && FERRY_SSH_CONFIG={ssh_config} ferry ...; close stdin to go on", dir.display());
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    }
    eprintln!("==> 1, 2, 3, 5, 7: deploy N = {}", opts.hosts);
    for (run, (version, release)) in releases.iter().enumerate().skip(1) {
        let mut order = ["ferry", "peer", "floor"];
        order.rotate_left(run % 3);
        for what in order.into_iter().filter(|w| !opts.only_ferry || *w == "ferry") {
            match what {
                "ferry" => {
                    let deploy = measure::ferry(&dir, &["deploy", "--release", release.to_str().unwrap()], &env);
                    report.deploy_ferry.push(secs(deploy.wall));
                    report.rss_deploy_kib.push(deploy.rss_kib);
                    health_latencies(&deploy, fleet, report);
                    report.log(&format!(
                        "deploy run {run}: ferry {:.3} s, {} bytes uploaded, peak RSS {} KiB",
                        secs(deploy.wall),
                        deploy.bytes_uploaded(),
                        deploy.rss_kib
                    ));
                    let again = measure::ferry(&dir, &["deploy", "--release", release.to_str().unwrap()], &env);
                    report.redeploy_wall.push(secs(again.wall));
                    report.redeploy_bytes.push(again.bytes_uploaded());
                    report.log(&format!(
                        "redeploy run {run}: ferry {:.3} s, {} bytes uploaded",
                        secs(again.wall),
                        again.bytes_uploaded()
                    ));
                    let back = measure::ferry(&dir, &["rollback"], &env);
                    report.rollback_ferry.push(secs(back.wall));
                    report.log(&format!("rollback run {run}: ferry {:.3} s", secs(back.wall)));
                    // Forward again to the release the hosts still have (no upload),
                    // with the default min_healthy_time: what the window costs.
                    let default = measure::ferry(&defaults, &["deploy", "--release", release.to_str().unwrap()], &env);
                    report.deploy_default.push(secs(default.wall));
                    report.log(&format!(
                        "deploy run {run} with ferry's defaults (min_healthy_time 1s): ferry {:.3} s",
                        secs(default.wall)
                    ));
                }
                "peer" => {
                    let wall = ansible(&peer_env, version, release);
                    report.deploy_peer.push(secs(wall));
                    report.log(&format!("deploy run {run}: ansible {:.3} s", secs(wall)));
                }
                _ => {
                    let scp = secs(measure::parallel_scp(fleet, release));
                    let unpacked = work.join("floor").join(version);
                    unpack(release, &unpacked);
                    let start = serial_path(&unpacked, split) + serial_path(&unpacked, opts.hosts - split);
                    let restart: f64 = (0..opts.hosts).map(|_| secs(measure::restart_to_healthy(&unpacked))).sum();
                    report.deploy_scp.push(scp);
                    report.deploy_floor.push(scp + start);
                    report.rollback_floor.push(restart);
                    report.log(&format!(
                        "deploy run {run}: floor {:.3} s (parallel scp {scp:.3} s + start-to-healthy {start:.3} s); \
                         rollback floor (stop, start, healthy) {restart:.3} s",
                        scp + start
                    ));
                }
            }
        }
    }
}

/// Figure 5: for each instance ferry reported healthy, the time from the app's first
/// 200 (recorded by the app) to the `instance_healthy` event reaching the benchmark.
fn health_latencies(deploy: &FerryRun, fleet: &SshFleet, report: &mut Report) {
    for (at, event) in deploy.of_kind("instance_healthy") {
        let (Some(host), Some(id), Some(version)) =
            (event["host"].as_str(), event["instance"].as_str(), event["version"].as_str())
        else {
            continue;
        };
        let Some(home) = fleet.hosts().iter().find(|h| host.contains(&format!("{}@", h.user))).map(|h| &h.home) else {
            report.health_missing += 1;
            continue;
        };
        let read =
            |name: String| fs::read_to_string(home.join("first-ok").join(name)).ok()?.trim().parse::<u128>().ok();
        match (read(format!("{id}-{version}")), read(format!("ready-{id}-{version}"))) {
            (Some(first_ok), Some(ready)) => {
                report.health_ms.push(at.saturating_sub(first_ok) as f64 / 1e6);
                report.ready_ms.push(at.saturating_sub(ready) as f64 / 1e6);
            }
            _ => report.health_missing += 1,
        }
    }
}

/// Figure 6 and the second half of 7: many instances in many regions on the local target.
pub fn local_scale(opts: &Opts, work: &Path, tree: &Tree, report: &mut Report) {
    let n = opts.local_regions.min(REGIONS.len());
    let per = opts.local_per_region;
    eprintln!("==> 6, 7: {} instances in {n} regions on the local target", n * per);
    let regions: Vec<(&str, Vec<String>, usize)> = REGIONS[..n].iter().map(|r| (*r, Vec::new(), per)).collect();
    let dir = project(&work.join("local"), tree, "local", "", SAME_WORK, &regions);
    let releases: Vec<(String, PathBuf)> =
        (0..=opts.runs).map(|i| (format!("v{i}"), work.join("releases").join(format!("hello-v{i}.tar.gz")))).collect();
    measure::ferry(&dir, &["deploy", "--release", releases[0].1.to_str().unwrap()], &[]);
    for (run, (version, release)) in releases.iter().enumerate().skip(1) {
        let unpacked = work.join("floor").join(version);
        unpack(release, &unpacked);
        let floor = || {
            let primary = serial_path(&unpacked, per);
            let slowest = (1..n).map(|_| serial_path(&unpacked, per)).fold(0.0, f64::max);
            primary + slowest
        };
        let floor_first = run % 2 == 0 && !opts.only_ferry;
        let before = if floor_first { Some(floor()) } else { None };
        let deploy = measure::ferry(&dir, &["deploy", "--release", release.to_str().unwrap()], &[]);
        let floor = before.unwrap_or_else(|| if opts.only_ferry { f64::NAN } else { floor() });
        report.scale_ferry.push(secs(deploy.wall));
        report.scale_floor.push(floor);
        report.rss_scale_kib.push(deploy.rss_kib);
        report.log(&format!(
            "scale run {run}: ferry {:.3} s, floor {floor:.3} s, peak RSS {} KiB",
            secs(deploy.wall),
            deploy.rss_kib
        ));
    }
    measure::ferry(&dir, &["destroy", "--yes"], &[]);
}

fn med_u(values: &[u64]) -> f64 {
    median(&values.iter().map(|v| *v as f64).collect::<Vec<_>>())
}

/// One line of the figures table.
struct Row {
    figure: String,
    measured: String,
    target: &'static str,
    met: bool,
}

impl Report {
    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        let (ferry, peer, floor) = (median(&self.deploy_ferry), median(&self.deploy_peer), median(&self.deploy_floor));
        rows.push(Row {
            figure: format!("1. deploy, N = {} hosts, 2 regions: ferry / floor", self.hosts),
            measured: format!("{ferry:.2} s / {floor:.2} s = {:.2}x", ferry / floor),
            target: "<= 1.3x",
            met: ferry <= 1.3 * floor,
        });
        rows.push(Row {
            figure: format!("1. deploy, N = {}: Ansible / ferry", self.hosts),
            measured: format!("{peer:.2} s / {ferry:.2} s = {:.1}x", peer / ferry),
            target: ">= 10x",
            met: peer >= 10.0 * ferry,
        });
        let (default, back) = (median(&self.deploy_default), median(&self.rollback_ferry));
        rows.push(Row {
            figure: "1. deploy of a release on the hosts, min_healthy_time 1s (default)".into(),
            measured: format!("{default:.2} s; the same rollout without it (3.): {back:.2} s"),
            target: "(reported)",
            met: true,
        });
        let bytes = self.redeploy_bytes.iter().max().copied().unwrap_or(u64::MAX);
        rows.push(Row {
            figure: "2. the same release again: bytes uploaded, wall".into(),
            measured: format!("{bytes} bytes, {:.2} s", median(&self.redeploy_wall)),
            target: "0 bytes",
            met: bytes == 0,
        });
        let (back, restart) = (median(&self.rollback_ferry), median(&self.rollback_floor));
        rows.push(Row {
            figure: "3. rollback / restart+health floor".into(),
            measured: format!("{back:.2} s / {restart:.2} s = {:.2}x", back / restart),
            target: "<= 1.2x",
            met: back <= 1.2 * restart,
        });
        let (build, czf, zstd) = (median(&self.build_ferry), median(&self.build_czf), median(&self.build_zstd));
        let size_ratio = self.size_ferry as f64 / self.size_czf as f64;
        rows.push(Row {
            figure: "4. release build vs tar czf (time, size)".into(),
            measured: format!(
                "{build:.3} s vs {czf:.3} s = {:.1}x faster; size {:.3}x ({} vs {} bytes)",
                czf / build,
                size_ratio,
                self.size_ferry,
                self.size_czf
            ),
            target: ">= 3x at <= 1.05x",
            met: czf >= 3.0 * build && size_ratio <= 1.05,
        });
        rows.push(Row {
            figure: "4. release build vs tar -I zstd (time, size)".into(),
            measured: format!(
                "{build:.3} s vs {zstd:.3} s = {:.1}x; size {:.3}x ({} bytes)",
                zstd / build,
                self.size_ferry as f64 / self.size_zstd as f64,
                self.size_zstd
            ),
            target: "(reported)",
            met: true,
        });
        let worst = self.health_ms.iter().copied().fold(0.0, f64::max);
        let worst_ready = self.ready_ms.iter().copied().fold(0.0, f64::max);
        rows.push(Row {
            figure: format!("5. healthy event after the app's first 200 ({} instances)", self.health_ms.len()),
            measured: format!("median {:.1} ms, max {worst:.1} ms", median(&self.health_ms)),
            target: "<= 100 ms",
            met: !self.health_ms.is_empty() && worst <= 100.0 && self.health_missing == 0,
        });
        rows.push(Row {
            figure: "5. healthy event after the app started listening".into(),
            measured: format!("median {:.1} ms, max {worst_ready:.1} ms", median(&self.ready_ms)),
            target: "<= 100 ms",
            met: !self.ready_ms.is_empty() && worst_ready <= 100.0,
        });
        let (scale, scale_floor) = (median(&self.scale_ferry), median(&self.scale_floor));
        rows.push(Row {
            figure: format!(
                "6. {} instances in {} regions, local: ferry / floor",
                self.scale_instances, self.scale_regions
            ),
            measured: format!("{scale:.2} s / {scale_floor:.2} s = {:.2}x", scale / scale_floor),
            target: "<= 1.2x",
            met: scale <= 1.2 * scale_floor,
        });
        let (rss_deploy, rss_scale) = (med_u(&self.rss_deploy_kib) / 1024.0, med_u(&self.rss_scale_kib) / 1024.0);
        let rss_max = self.rss_deploy_kib.iter().chain(&self.rss_scale_kib).max().copied().unwrap_or(0) as f64 / 1024.0;
        rows.push(Row {
            figure: format!("7. peak RSS: deploy N = {} / {} instances", self.hosts, self.scale_instances),
            measured: format!("{rss_deploy:.1} MiB / {rss_scale:.1} MiB (max {rss_max:.1} MiB)"),
            target: "<= 40 MB",
            met: rss_max > 0.0 && rss_max * 1.048_576 <= 40.0,
        });
        self.proxy_rows(&mut rows);
        self.rollout_rows(&mut rows);
        let gaps: Vec<f64> = self.kill_gaps.iter().map(|(g, _)| *g).collect();
        let refused: u64 = self.kill_gaps.iter().map(|(_, r)| r).sum();
        let worst = gaps.iter().copied().fold(0.0, f64::max);
        rows.push(Row {
            figure: format!("10. agent killed ({} times): first answer after, refused", gaps.len()),
            measured: format!("median {:.0} ms, max {worst:.0} ms; {refused} refused", median(&gaps)),
            target: "<= 1 s, 0 refused",
            met: !gaps.is_empty() && worst <= 1000.0 && refused == 0,
        });
        rows
    }

    fn rollout_rows(&self, rows: &mut Vec<Row>) {
        let names: Vec<&str> = self.rollouts.iter().map(|(n, _)| n.as_str()).collect();
        let failed: Vec<String> =
            self.rollouts.iter().map(|(_, s)| format!("{} of {}", s.failed, s.requests())).collect();
        rows.push(Row {
            figure: format!("9. failed requests during {}", names.join(" / ")),
            measured: failed.join("; "),
            target: "0 each",
            met: !self.rollouts.is_empty() && self.rollouts.iter().all(|(_, s)| s.failed == 0 && s.requests() > 0),
        });
        let p99: Vec<String> = self.rollouts.iter().map(|(_, s)| format!("{:.1}", s.p99_ms())).collect();
        rows.push(Row {
            figure: "9. p99 during those / steady".into(),
            measured: format!(
                "{} ms / {:.1} ms",
                p99.join("; "),
                self.steady.as_ref().map_or(f64::NAN, crate::load::Seen::p99_ms)
            ),
            target: "(reported)",
            met: true,
        });
    }

    fn proxy_rows(&self, rows: &mut Vec<Row>) {
        let heavy = |i: usize, f: fn(&crate::proxy::Wrk) -> f64| {
            median(&self.proxy[i].iter().map(|(h, _)| f(h)).collect::<Vec<_>>())
        };
        let light = |i: usize| median(&self.proxy[i].iter().map(|(_, l)| l.p99_ms).collect::<Vec<_>>());
        let rps: Vec<f64> = (0..4).map(|i| heavy(i, |w| w.rps)).collect();
        let errors: u64 = self.proxy.iter().flatten().map(|(h, l)| h.errors + l.errors).sum();
        rows.push(Row {
            figure: "8. proxy throughput, wrk 64 conns: ferry / HAProxy / Caddy (direct)".into(),
            measured: format!("{:.0} / {:.0} / {:.0} req/s ({:.0}); {errors} errors", rps[0], rps[1], rps[2], rps[3]),
            target: ">= HAProxy, >= Caddy",
            met: rps[0] >= rps[1] && rps[0] >= rps[2] && errors == 0,
        });
        let (p50, p99): (Vec<f64>, Vec<f64>) = (0..4).map(|i| (heavy(i, |w| w.p50_ms), heavy(i, |w| w.p99_ms))).unzip();
        rows.push(Row {
            figure: "8. p50 / p99 at 64 conns: ferry; HAProxy; Caddy; direct".into(),
            measured: format!(
                "{:.2}/{:.2}; {:.2}/{:.2}; {:.2}/{:.2}; {:.2}/{:.2} ms",
                p50[0], p99[0], p50[1], p99[1], p50[2], p99[2], p50[3], p99[3]
            ),
            target: "(reported)",
            met: true,
        });
        let added: Vec<f64> = (0..3).map(|i| light(i) - light(3)).collect();
        rows.push(Row {
            figure: "8. added p99 at 4 conns (well under max): ferry; HAProxy; Caddy".into(),
            measured: format!(
                "{:+.3}; {:+.3}; {:+.3} ms (direct p99 {:.3} ms)",
                added[0],
                added[1],
                added[2],
                light(3)
            ),
            target: "ferry <= +1 ms",
            met: added[0] <= 1.0,
        });
        let (agent, keeper) = self.proxy_rss_kib.unwrap_or((0, 0));
        rows.push(Row {
            figure: format!("8. agent RSS with {} open connections (keeper)", self.proxy_connections),
            measured: format!("{:.1} MiB ({:.1} MiB)", agent as f64 / 1024.0, keeper as f64 / 1024.0),
            target: "<= 30 MiB",
            met: agent > 0 && agent as f64 / 1024.0 <= 30.0,
        });
    }

    /// The results file: header, figures with targets, every run's numbers.
    pub fn render(&self) -> String {
        let mut out = self.header.clone();
        let _ = writeln!(
            out,
            "floors: deploy = parallel scp to every host + the app's start-to-healthy times summed over the primary \
             region's serial path and the other region's; rollback = the same serial path of restarts (SIGTERM to \
             the running app, wait until it is gone, start, healthy), no copy; scale = the primary region's serial \
             path + the slowest other region's\n"
        );
        for row in self.rows() {
            let _ = writeln!(
                out,
                "{:<62} {:<58} {:<18} {}",
                row.figure,
                row.measured,
                row.target,
                if row.met { "met" } else { "MISSED" }
            );
        }
        let _ = writeln!(out, "\nruns:\n{}", self.runs);
        out
    }

    /// BENCHMARKS.md: this run's table, then whatever followed [`NOTES`] in the
    /// previous file (the notes written by hand stay).
    pub fn markdown(&self, results: &Path, previous: &str) -> String {
        let mut out = self.table(results);
        out.push('\n');
        out.push_str(NOTES);
        out.push('\n');
        if let Some((_, notes)) = previous.split_once(NOTES) {
            out.push_str(notes.trim_start_matches('\n'));
        }
        out
    }

    fn table(&self, results: &Path) -> String {
        let rel = results.strip_prefix(crate::repo()).unwrap_or(results).display().to_string();
        let mut out = String::from(
            "# Benchmarks\n\nferry against the Ansible playbook a competent user would write for the same job, and against \
             the physical floor, measured in one run on the same real `sshd` hosts (loopback). How to run it and what \
             each number means: [bench/README.md](bench/README.md).\n\n",
        );
        let _ = writeln!(out, "Latest full run: [{rel}]({rel})\n\n```\n{}```\n", self.header);
        out.push_str("| figure | measured | target | |\n| --- | --- | --- | --- |\n");
        for row in self.rows() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                row.figure,
                row.measured,
                row.target,
                if row.met { "met" } else { "**missed**" }
            );
        }
        out
    }

    /// What must hold even in a smoke run, whatever the machine's speed.
    pub fn sane(&self) -> Result<(), String> {
        let empty = [
            ("build", self.build_ferry.len()),
            ("deploy", self.deploy_ferry.len()),
            ("deploy with defaults", self.deploy_default.len()),
            ("peer", self.deploy_peer.len()),
            ("floor", self.deploy_floor.len()),
            ("rollback", self.rollback_ferry.len()),
            ("health latency", self.health_ms.len()),
            ("scale", self.scale_ferry.len()),
            ("proxy", self.proxy.iter().map(Vec::len).min().unwrap_or(0)),
        ];
        if let Some((name, _)) = empty.iter().find(|(_, n)| *n == 0) {
            return Err(format!("no {name} measurement was taken"));
        }
        if self.health_missing > 0 {
            return Err(format!("{} healthy instances left no first-200 record", self.health_missing));
        }
        if let Some((name, seen)) = self.rollouts.iter().find(|(_, s)| s.failed > 0) {
            return Err(format!(
                "{} requests failed through the front door during the {name}: {:?}",
                seen.failed, seen.errors
            ));
        }
        if self.kill_gaps.is_empty() {
            return Err("the agent was never killed to time the front door's gap".into());
        }
        if self.kill_gaps.iter().any(|(_, refused)| *refused > 0) {
            return Err(format!("connections were refused after the agent was killed: {:?}", self.kill_gaps));
        }
        if self.rollouts.len() < 4 {
            return Err("not every rollout was measured under load".into());
        }
        let errors: u64 = self.proxy.iter().flatten().map(|(h, l)| h.errors + l.errors).sum();
        if errors > 0 {
            return Err(format!("{errors} requests failed through the proxies"));
        }
        if self.proxy_rss_kib.is_none_or(|(agent, _)| agent == 0) {
            return Err("the agent's RSS with open connections was not read".into());
        }
        if self.redeploy_bytes.iter().any(|b| *b != 0) {
            return Err(format!("the same release was uploaded again: {:?} bytes", self.redeploy_bytes));
        }
        Ok(())
    }
}
