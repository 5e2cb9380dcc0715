//! Human output on stderr. On a terminal each region gets a spinner showing what it is
//! doing; finished steps print as lines above them. Without a terminal, plain lines.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Event, Outcome, PlanItem, Reporter};

pub struct Human {
    multi: Option<MultiProgress>,
    bars: Mutex<BTreeMap<String, ProgressBar>>,
    uploads: Mutex<BTreeMap<String, ProgressBar>>,
    /// By region: instances healthy so far, and how many change.
    done: Mutex<BTreeMap<String, (usize, usize)>>,
    /// By instance, without a terminal: the last wait said (check result, when).
    waits: Mutex<BTreeMap<String, (Option<String>, u64)>>,
}

impl Human {
    pub fn new() -> Self {
        let multi =
            std::io::stderr().is_terminal().then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Self {
            multi,
            bars: Mutex::new(BTreeMap::new()),
            uploads: Mutex::new(BTreeMap::new()),
            done: Mutex::new(BTreeMap::new()),
            waits: Mutex::new(BTreeMap::new()),
        }
    }

    /// `[n/m] ` of the region's instances, once it changes more than one.
    fn done_of(&self, region: &str) -> String {
        let done = self.done.lock().map(|d| d.get(region).copied()).ok().flatten();
        match done {
            Some((healthy, total)) if total > 1 => format!("[{healthy}/{total}] "),
            _ => String::new(),
        }
    }

    /// Without a terminal a wait is a line when its check says something new, and
    /// every half minute otherwise.
    fn wait_is_news(&self, instance: &str, last_check: Option<&String>, elapsed_ms: u64) -> bool {
        let Ok(mut waits) = self.waits.lock() else { return true };
        let news = match waits.get(instance) {
            Some((said, at)) => said.as_ref() != last_check || elapsed_ms >= at + 30_000,
            None => true,
        };
        if news {
            waits.insert(instance.to_string(), (last_check.cloned(), elapsed_ms));
        }
        news
    }

    fn line(&self, text: &str) {
        match &self.multi {
            Some(multi) => {
                let _ = multi.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    fn activity(&self, region: &str, message: String) {
        let Some(multi) = &self.multi else { return };
        let Ok(mut bars) = self.bars.lock() else { return };
        let bar = bars.entry(region.to_string()).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:>6} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(region.to_string());
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        bar.set_message(message);
    }

    fn region_done(&self, region: &str) {
        if let Ok(mut bars) = self.bars.lock() {
            if let Some(bar) = bars.remove(region) {
                bar.finish_and_clear();
            }
        }
    }
}

impl Default for Human {
    fn default() -> Self {
        Self::new()
    }
}

/// One line of a printed plan.
fn plan_line(item: &PlanItem) -> String {
    match item {
        PlanItem::Doors { host, listen, .. } => format!("  door    {host}: {}", listen.join(", ")),
        PlanItem::Ship { host, wave, action, .. } => match action.as_str() {
            "present" => format!("  ship    {host}: already there"),
            _ => format!("  ship    {host}: {action} ({wave})"),
        },
        PlanItem::RestoreBackup { id } => format!("  restore backup {id} (pg_restore, after confirmation)"),
        PlanItem::Backup { host } => format!("  backup  pg_dump on {host}, verified"),
        PlanItem::ReleaseCommand { host, command } => format!("  release_command on {host}: {command}"),
        PlanItem::ReplicaGate { region } => format!("  {region:>6}  waits for its replica to replay the migration"),
        PlanItem::Instance { region, group, host, instance, action, how, batch, from, to, why } => {
            let instance = labelled(instance, group);
            let from = from.as_ref().map(|f| format!("{f} -> ")).unwrap_or_default();
            let batch = if *batch > 0 && action == "replace" { format!(" (batch {batch})") } else { String::new() };
            let why = why.as_ref().map(|w| format!(": {w}")).unwrap_or_default();
            let how = how.as_ref().map(|h| format!(", {h}")).unwrap_or_default();
            format!("  {region:>6}  {instance}  on {host}: {action}{batch} {from}{to}{why}{how}")
        }
        PlanItem::Stop { region, host, instance, version } => {
            format!("  {region:>6}  {instance}  on {host}: stop {version}")
        }
        PlanItem::Finish { record, version, mark_current, prune } => {
            let mut text = format!("  finish  record {record} {version}");
            if *mark_current {
                text.push_str(", mark it current");
            }
            for p in prune {
                let _ = write!(text, ", prune {} on {}", p.version, p.host);
            }
            text
        }
    }
}

/// `12s`, `1m 5s`.
fn whole_secs(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

fn secs(ms: u64) -> String {
    format!("{:.1}s", Duration::from_millis(ms).as_secs_f64())
}

impl Reporter for Human {
    fn event(&self, event: &Event) {
        match event {
            Event::DeployStarted { kind, app, version, previous, strategy, regions } => {
                let from = previous.as_ref().map(|p| format!(" (from {p})")).unwrap_or_default();
                self.line(&format!("==> {kind} {app} {version}{from}: {strategy}, regions {}", regions.join(", ")));
            }
            Event::Plan(item) => self.line(&plan_line(item)),
            Event::Warning { message } => self.line(&format!("warning: {message}")),
            Event::LockTakenOver { host, previous_holder, reason } => {
                self.line(&format!("warning: took over a stale lock on `{host}` held by {previous_holder}: {reason}"));
            }
            Event::Built { path, sha256, size, version } => {
                self.line(&format!(
                    "built {version}: {path} ({size} bytes, sha256 {})",
                    &sha256[..sha256.len().min(12)]
                ));
            }
            Event::Upload { host, bytes_sent, skipped } => {
                if *skipped {
                    self.line(&format!("  upload  {host}: already there, skipped"));
                } else {
                    self.line(&format!("  upload  {host}: {bytes_sent} bytes"));
                }
            }
            Event::ReleaseInstalled { .. } => {}
            Event::RegionStarted { region, instances } => {
                if let Ok(mut done) = self.done.lock() {
                    done.insert(region.clone(), (0, *instances));
                }
            }
            Event::ReplicaWaiting { region, replica, lag_bytes } => {
                self.activity(
                    region,
                    format!("waiting for replica {replica} to replay the migration: {lag_bytes} bytes behind"),
                );
                if self.multi.is_none() {
                    self.line(&format!("  {region:>6}  waiting for replica {replica}: {lag_bytes} bytes behind"));
                }
            }
            Event::ReplicaCaughtUp { region, replica } => {
                self.line(&format!("  {region:>6}  replica {replica} has replayed the migration"));
            }
            Event::BackupStarted { host, database } => {
                self.line(&format!("==> backup of {database} on {host} (pg_dump)"));
            }
            Event::BackupTaken { id, size, .. } => {
                self.line(&format!("  backup {id}: {size} bytes, verified with pg_restore --list"));
            }
            Event::ReleaseCommandStarted { host, command } => {
                self.line(&format!("==> release_command on {host}: {command}"));
            }
            Event::ReleaseCommandOutput { line } => self.line(&format!("  release_command | {line}")),
            Event::ReleaseCommandFinished { success, exit_code, duration_ms, .. } => {
                let status = if *success {
                    "succeeded".to_string()
                } else {
                    format!("failed (exit {})", exit_code.map_or("signal".into(), |c| c.to_string()))
                };
                self.line(&format!("  release_command {status} in {}", secs(*duration_ms)));
            }
            Event::InstanceUpdating { region, group, instance, from, to, .. } => {
                let instance = labelled(instance, group);
                let from = from.as_ref().map(|f| format!("{f} -> ")).unwrap_or_default();
                self.activity(region, format!("{}{instance} {from}{to} starting", self.done_of(region)));
            }
            Event::InstanceWaiting {
                region,
                group,
                host,
                instance,
                version,
                elapsed_ms,
                deadline_ms,
                last_check,
                ..
            } => {
                let named = labelled(instance, group);
                let last = last_check.as_ref().map_or_else(|| "no check has run yet".to_string(), Clone::clone);
                let waited = format!("{} of {}", whole_secs(*elapsed_ms), whole_secs(*deadline_ms));
                let done = self.done_of(region);
                self.activity(region, format!("{done}{named} {version} not healthy yet ({waited}): {last}"));
                if self.multi.is_none() && self.wait_is_news(instance, last_check.as_ref(), *elapsed_ms) {
                    self.line(&format!("  {region:>6}  {done}{named}  {version} waiting on {host}, {waited}: {last}"));
                }
            }
            Event::InstanceUnchanged { region, instance, version, .. } => {
                self.line(&format!("  {region:>6}  {instance}  already {version}, healthy"));
            }
            Event::CanaryWatched { region, host, instance, weight, secs } => {
                self.line(&format!(
                    "  {region:>6}  {instance}  canary on {host}: takes {weight}% of the clients for {secs:.0}s, watched for errors"
                ));
            }
            Event::InstanceHealthy { region, group, host, instance, version, port, elapsed_ms } => {
                if let Ok(mut done) = self.done.lock() {
                    if let Some((healthy, _)) = done.get_mut(region) {
                        *healthy += 1;
                    }
                }
                let instance = labelled(instance, group);
                self.line(&format!(
                    "  {region:>6}  {instance}  {version} {} in {} ({host}, port {port})",
                    good("healthy"),
                    secs(*elapsed_ms)
                ));
            }
            Event::InstanceFailed { region, group, host, instance, version, reason, log } => {
                let named = labelled(instance, group);
                self.line(&format!("  {region:>6}  {named}  {version} {} on {host}: {reason}", bad("FAILED")));
                if !log.is_empty() {
                    self.line(&format!("          last {} log lines of {instance}:", log.len()));
                    for line in log {
                        self.line(&format!("          | {line}"));
                    }
                }
            }
            Event::InstanceReverted { region, instance, version, .. } => match version {
                Some(v) => self.line(&format!("  {region:>6}  {instance}  {} to {v}, healthy", warn("reverted"))),
                None => self.line(&format!("  {region:>6}  {instance}  removed (it was new)")),
            },
            Event::InstanceRevertFailed { region, instance, reason, .. } => {
                self.line(&format!("  {region:>6}  {instance}  {}: {reason}", bad("could NOT be reverted")));
            }
            Event::InstanceStopped { region, instance, host } => {
                self.line(&format!("  {region:>6}  {instance}  stopped on {host}"));
            }
            Event::RegionFinished { region, .. } => self.region_done(region),
            Event::Pruned { host, version } => self.line(&format!("  pruned {version} on {host}")),
            Event::Finished { outcome, message, duration_ms, .. } => {
                let word = match outcome {
                    Outcome::Succeeded => good("done"),
                    Outcome::Reverted => warn("reverted"),
                    Outcome::Failed => bad("FAILED"),
                };
                self.line(&format!("==> {word} in {}: {message}", secs(*duration_ms)));
            }
        }
    }

    fn note(&self, text: &str) {
        self.line(text);
    }

    fn upload_progress(&self, host: &str, sent: u64, total: u64) {
        let Some(multi) = &self.multi else { return };
        let Ok(mut uploads) = self.uploads.lock() else { return };
        let bar = uploads.entry(host.to_string()).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new(total));
            bar.set_style(
                ProgressStyle::with_template("  upload {prefix:20} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(host.to_string());
            bar
        });
        bar.set_position(sent);
        if sent >= total {
            bar.finish_and_clear();
        }
    }

    fn finish(&self) {
        if let Ok(mut bars) = self.bars.lock() {
            for (_, bar) in std::mem::take(&mut *bars) {
                bar.finish_and_clear();
            }
        }
    }
}

/// Outcomes in colour on a colour terminal (console leaves it out for a pipe, `TERM=dumb`
/// or `NO_COLOR`); human output goes to stderr.
fn good(word: &str) -> String {
    console::style(word).green().for_stderr().to_string()
}

fn warn(word: &str) -> String {
    console::style(word).yellow().for_stderr().to_string()
}

fn bad(word: &str) -> String {
    console::style(word).red().bold().for_stderr().to_string()
}

/// An instance id, with its process group unless it is the implicit `app`.
fn labelled(instance: &str, group: &str) -> String {
    if group == crate::config::DEFAULT_GROUP {
        instance.to_string()
    } else {
        format!("{instance} ({group})")
    }
}
