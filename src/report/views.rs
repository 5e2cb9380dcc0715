//! What read commands show, as data with a human form: each view serializes to the
//! JSON `--json` prints and renders as a table sized to its content (wrapped to the
//! terminal's width when stdout is one). Commands fill views; only reporters print.

use std::fmt::Write as _;
use std::time::Duration;

use comfy_table::{presets, ContentArrangement, Table};
use serde::Serialize;

use crate::history::Entry;
use crate::host::lock::Held;
use crate::host::Volume;
use crate::postgres::Backup;

/// Data a read command shows.
pub trait View: Serialize {
    /// The human form, printed on stdout.
    fn render(&self) -> String;
}

/// A table with no borders, a header, columns as wide as their content, and
/// the terminal's width as the limit when stdout is a terminal.
fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING).set_header(header.to_vec());
    match console::Term::stdout().size_checked() {
        Some((_, width)) => {
            table.set_content_arrangement(ContentArrangement::Dynamic).set_width(width);
        }
        None => {
            table.set_content_arrangement(ContentArrangement::Disabled);
        }
    }
    table
}

/// How wide tables may be: the terminal's width, else `$COLUMNS`, else no limit (a
/// pipe gets every column).
fn width_limit() -> Option<usize> {
    console::Term::stdout()
        .size_checked()
        .map(|(_, w)| usize::from(w))
        .or_else(|| std::env::var("COLUMNS").ok()?.trim().parse().ok().filter(|w: &usize| *w > 0))
}

/// A table that fits `limit` columns: when its natural width is too much, the columns
/// least worth keeping (lowest `keep`) are left out first, and said so under it; what
/// is still too wide wraps within its cells. `header` is `(name, keep)`.
fn fitted(header: &[(&str, u8)], rows: &[Vec<String>], limit: Option<usize>) -> String {
    let width_of =
        |i: usize| rows.iter().map(|r| r[i].chars().count()).chain([header[i].0.len()]).max().unwrap_or(0) + 2;
    let mut shown: Vec<usize> = (0..header.len()).collect();
    let mut left_out = Vec::new();
    if let Some(limit) = limit {
        while shown.iter().map(|i| width_of(*i)).sum::<usize>().saturating_sub(1) > limit {
            let max = shown.iter().map(|i| header[*i].1).max().unwrap_or(0);
            let Some(pos) =
                (0..shown.len()).rev().filter(|p| header[shown[*p]].1 < max).min_by_key(|p| header[shown[*p]].1)
            else {
                break;
            };
            left_out.push(shown.remove(pos));
        }
    }
    left_out.sort_unstable();
    let mut table = Table::new();
    table.load_preset(presets::NOTHING).set_header(shown.iter().map(|i| header[*i].0).collect::<Vec<_>>());
    match limit {
        Some(limit) => {
            table
                .set_content_arrangement(ContentArrangement::Dynamic)
                .set_width(u16::try_from(limit).unwrap_or(u16::MAX));
        }
        None => {
            table.set_content_arrangement(ContentArrangement::Disabled);
        }
    }
    for row in rows {
        table.add_row(shown.iter().map(|i| row[*i].clone()).collect::<Vec<_>>());
    }
    let mut out = rendered(&table);
    if !left_out.is_empty() {
        let names: Vec<&str> = left_out.iter().map(|i| header[*i].0).collect();
        let _ = writeln!(out, "(left out to fit: {}; see --json)", names.join(", "));
    }
    out
}

fn or_dash(value: Option<&str>) -> String {
    value.map_or_else(|| "-".to_string(), str::to_string)
}

fn rendered(table: &Table) -> String {
    // comfy-table pads every line to the column widths; trailing spaces are noise.
    table.lines().map(|line| line.trim_end().to_string()).collect::<Vec<_>>().join("\n") + "\n"
}

#[derive(Debug, Serialize)]
pub struct InstanceRow {
    pub region: String,
    /// Its process group.
    pub group: String,
    pub host: String,
    pub id: String,
    pub version: String,
    /// `running`, `starting`, `restarting`, `crashed` (its restart policy gave up),
    /// `exited` or `stopped`.
    pub state: String,
    /// `passing`, `failing` or `-` (not running).
    pub health: &'static str,
    /// The failing check's error.
    pub health_detail: Option<String>,
    /// When its checks last ran (ms since the epoch).
    pub checked_at: Option<u64>,
    pub port: u16,
    pub pid: Option<u32>,
    pub uptime_secs: Option<u64>,
    /// Restarts by its restart policy since an operation last started it.
    pub restarts: u32,
    /// How its last process ended.
    pub last_exit: Option<String>,
    /// Whether the front door sends it requests now (it is in the routing table and
    /// passes its checks).
    pub traffic: bool,
}

/// Where a region's front door listens.
#[derive(Debug, Serialize)]
pub struct FrontDoorRow {
    pub region: String,
    /// `ip:port`.
    pub address: String,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub app: String,
    pub current_version: Option<String>,
    pub front_doors: Vec<FrontDoorRow>,
    /// While in maintenance: the page's message (on any host).
    pub maintenance: Option<String>,
    pub instances: Vec<InstanceRow>,
    /// Hosts whose instances will not come back after a reboot, said as a warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_warning: Option<String>,
}

impl View for Status {
    fn render(&self) -> String {
        let mut out =
            format!("app {}  current version {}\n", self.app, self.current_version.as_deref().unwrap_or("(none)"));
        for door in &self.front_doors {
            let _ = writeln!(out, "front door {}  {}", door.region, door.address);
        }
        if let Some(message) = &self.maintenance {
            let _ = writeln!(
                out,
                "MAINTENANCE: every request is answered 503 ({message}); `ferry maintenance off` ends it"
            );
        }
        if self.instances.is_empty() {
            out.push_str("no instances; run `ferry deploy`\n");
            return out;
        }
        // The group column only when there is more than the one implicit group.
        let grouped = self.instances.iter().any(|r| r.group != crate::config::DEFAULT_GROUP);
        let header = [
            ("REGION", 9),
            ("GROUP", 7),
            ("HOST", 3),
            ("ID", 9),
            ("VERSION", 8),
            ("STATE", 8),
            ("HEALTH", 8),
            ("TRAFFIC", 4),
            ("PORT", 5),
            ("PID", 2),
            ("UPTIME", 4),
            ("RESTARTS", 2),
            ("LAST EXIT", 1),
        ];
        let mut rows = Vec::new();
        for r in &self.instances {
            let uptime = r.uptime_secs.map(|s| humantime::format_duration(Duration::from_secs(s)).to_string());
            rows.push(vec![
                r.region.clone(),
                r.group.clone(),
                r.host.clone(),
                r.id.clone(),
                r.version.clone(),
                r.state.clone(),
                r.health.to_string(),
                if r.traffic { "yes" } else { "no" }.to_string(),
                r.port.to_string(),
                or_dash(r.pid.map(|p| p.to_string()).as_deref()),
                or_dash(uptime.as_deref()),
                r.restarts.to_string(),
                or_dash(r.last_exit.as_deref()),
            ]);
        }
        let (header, rows): (Vec<(&str, u8)>, Vec<Vec<String>>) = if grouped {
            (header.to_vec(), rows)
        } else {
            let without = |row: &[String]| -> Vec<String> {
                row.iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, c)| c.clone()).collect()
            };
            let header = header.iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, h)| *h).collect();
            (header, rows.iter().map(|r| without(r)).collect())
        };
        let mut out = out + &fitted(&header, &rows, width_limit());
        for r in self.instances.iter().filter(|r| r.health == "failing") {
            if let Some(detail) = &r.health_detail {
                let _ = writeln!(out, "{} failing: {detail}", r.id);
            }
        }
        if let Some(warning) = &self.boot_warning {
            let _ = writeln!(out, "warning: {warning}");
        }
        out
    }
}

/// `ferry releases`: newest first.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct Releases(pub Vec<Entry>);

impl View for Releases {
    fn render(&self) -> String {
        if self.0.is_empty() {
            return "no releases yet; run `ferry deploy`\n".into();
        }
        let header = [("VERSION", 9), ("KIND", 6), ("STATUS", 8), ("WHEN", 7), ("BY", 3), ("PREVIOUS", 2)];
        let rows: Vec<Vec<String>> = self
            .0
            .iter()
            .map(|e| {
                vec![
                    if e.current { format!("{} *", e.version) } else { e.version.clone() },
                    e.kind.clone(),
                    e.status.clone(),
                    e.started_at.clone(),
                    e.by.clone(),
                    or_dash(e.previous.as_deref()),
                ]
            })
            .collect();
        let mut out = fitted(&header, &rows, width_limit());
        if self.0.iter().any(|e| e.current) {
            out.push_str("* runs now\n");
        }
        let failures: Vec<&Entry> = self.0.iter().filter(|e| e.status != "complete" && e.message.is_some()).collect();
        for e in failures {
            let _ = writeln!(out, "{} {} {}: {}", e.version, e.kind, e.status, e.message.as_deref().unwrap_or(""));
        }
        out
    }
}

/// Log lines of instances, each with its region and id.
#[derive(Debug, Serialize)]
pub struct LogLine {
    pub region: String,
    pub instance: String,
    pub line: String,
}

#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct Logs(pub Vec<LogLine>);

impl View for Logs {
    fn render(&self) -> String {
        self.0.iter().fold(String::new(), |mut out, l| {
            let _ = writeln!(out, "{}/{} | {}", l.region, l.instance, l.line);
            out
        })
    }
}

#[derive(Debug, Serialize)]
pub struct RegionRow {
    pub region: String,
    pub primary: bool,
    pub hosts: Vec<String>,
    pub count: u32,
    pub running: usize,
    pub versions: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct Regions(pub Vec<RegionRow>);

impl View for Regions {
    fn render(&self) -> String {
        let mut t = table(&["REGION", "PRIMARY", "COUNT", "RUNNING", "VERSIONS", "HOSTS"]);
        for r in &self.0 {
            t.add_row(vec![
                r.region.clone(),
                if r.primary { "yes".into() } else { String::new() },
                r.count.to_string(),
                r.running.to_string(),
                if r.versions.is_empty() { "-".into() } else { r.versions.join(",") },
                r.hosts.join(" "),
            ]);
        }
        rendered(&t)
    }
}

#[derive(Debug, Serialize)]
pub struct LockRow {
    pub host: String,
    pub locked: bool,
    #[serde(skip)]
    pub held: Option<Held>,
    pub holder: Option<crate::host::lock::Holder>,
    pub age_secs: Option<u64>,
    pub stale: Option<String>,
}

impl LockRow {
    pub fn new(host: String, held: Option<Held>) -> Self {
        Self {
            host,
            locked: held.is_some(),
            holder: held.as_ref().and_then(|l| l.holder.clone()),
            age_secs: held.as_ref().map(|l| l.age_secs),
            stale: held.as_ref().and_then(Held::stale_reason),
            held,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct Locks(pub Vec<LockRow>);

impl View for Locks {
    fn render(&self) -> String {
        let mut out = String::new();
        for row in &self.0 {
            match &row.held {
                None => {
                    let _ = writeln!(out, "{}: unlocked", row.host);
                }
                Some(held) => {
                    let stale = row.stale.as_ref().map(|r| format!(" (stale: {r})")).unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "{}: locked by {}, refreshed {}s ago{stale}",
                        row.host,
                        held.describe(),
                        held.age_secs
                    );
                }
            }
        }
        out
    }
}

#[derive(Debug, Serialize)]
pub struct SecretRow {
    pub name: String,
    /// When it was last set (RFC 3339, UTC), `-` when not recorded.
    pub set_at: String,
}

#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct Secrets(pub Vec<SecretRow>);

impl View for Secrets {
    fn render(&self) -> String {
        if self.0.is_empty() {
            return "no secrets; `ferry secrets set KEY=VALUE` adds one\n".into();
        }
        let mut t = table(&["NAME", "SET AT"]);
        for s in &self.0 {
            t.add_row(vec![s.name.clone(), s.set_at.clone()]);
        }
        rendered(&t)
    }
}

#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct Backups(pub Vec<Backup>);

impl View for Backups {
    fn render(&self) -> String {
        if self.0.is_empty() {
            return "no backups; `ferry backups create` takes one\n".into();
        }
        let header = [("ID", 9), ("CREATED", 7), ("DATABASE", 3), ("SIZE", 5), ("BEFORE", 6), ("AFTER", 6)];
        let mut rows = Vec::new();
        for b in &self.0 {
            rows.push(vec![
                b.id.clone(),
                b.created_at.clone(),
                b.database.clone(),
                b.size.to_string(),
                or_dash(b.release_before.as_deref()),
                or_dash(b.release_after.as_deref()),
            ]);
        }
        fitted(&header, &rows, width_limit())
    }
}

#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct Volumes(pub Vec<Volume>);

impl View for Volumes {
    fn render(&self) -> String {
        if self.0.is_empty() {
            return "no volumes; `ferry volumes create NAME --region R --size GB` makes one\n".into();
        }
        let header = [("ID", 9), ("NAME", 9), ("REGION", 8), ("SIZE", 7), ("HOST", 5), ("ATTACHED", 6), ("CREATED", 2)];
        let mut rows = Vec::new();
        for v in &self.0 {
            rows.push(vec![
                v.id.clone(),
                v.name.clone(),
                v.region.clone(),
                format!("{}GB", v.size_gb),
                v.host.clone(),
                or_dash(v.attached.as_deref()),
                v.created_at.clone(),
            ]);
        }
        fitted(&header, &rows, width_limit())
    }
}

/// A volume just created.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct CreatedVolume(pub Volume);

impl View for CreatedVolume {
    fn render(&self) -> String {
        let v = &self.0;
        format!("created volume {} `{}` ({} GB) in {} on {}\n", v.id, v.name, v.size_gb, v.region, v.host)
    }
}

#[derive(Debug, Serialize)]
pub struct Member {
    pub region: String,
    pub host: String,
    pub instance: String,
    pub address: String,
    pub role: String,
    pub lsn: Option<String>,
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
    pub streaming: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct Members(pub Vec<Member>);

impl View for Members {
    fn render(&self) -> String {
        let header = [
            ("REGION", 9),
            ("INSTANCE", 5),
            ("ADDRESS", 7),
            ("ROLE", 9),
            ("LSN", 3),
            ("LAG", 6),
            ("LAG(s)", 6),
            ("STREAMING", 4),
        ];
        let mut rows = Vec::new();
        for m in &self.0 {
            rows.push(vec![
                m.region.clone(),
                m.instance.clone(),
                m.address.clone(),
                m.role.clone(),
                or_dash(m.lsn.as_deref()),
                m.lag_bytes.map_or("-".to_string(), |b| format!("{b}B")),
                m.lag_seconds.map_or("-".to_string(), |s| format!("{s:.1}")),
                or_dash(m.streaming.as_deref().or(m.error.as_deref())),
            ]);
        }
        fitted(&header, &rows, width_limit())
    }
}

#[derive(Debug, Serialize)]
pub struct ConnectUrl {
    pub region: String,
    pub read: String,
    pub write: String,
}

impl View for ConnectUrl {
    fn render(&self) -> String {
        format!("read:  {}\nwrite: {}\n", self.read, self.write)
    }
}

/// A release just built: its path on stdout, the rest beside it.
#[derive(Debug, Serialize)]
pub struct BuiltRelease {
    pub path: String,
    pub sha256: String,
    pub size: u64,
    pub version: String,
}

impl View for BuiltRelease {
    fn render(&self) -> String {
        format!("{}\n", self.path)
    }
}

/// Any serializable value shown as pretty JSON (`ferry config show`).
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct Document(pub serde_json::Value);

impl View for Document {
    fn render(&self) -> String {
        serde_json::to_string_pretty(&self.0).unwrap_or_default() + "\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_too_wide_leaves_out_its_least_useful_columns_and_says_so() {
        let header = [("NAME", 9), ("NOTES", 1), ("VERSION", 8), ("WHERE", 3)];
        let rows = vec![
            vec!["web".into(), "x".repeat(40), "v0.1.0-1-gf42f3aa".into(), "local/syd".into()],
            vec!["worker".into(), "y".repeat(10), "v2".into(), "local/lax".into()],
        ];
        let wide = fitted(&header, &rows, None);
        assert!(wide.lines().next().unwrap().contains("NOTES"), "no limit, every column: {wide}");
        let narrow = fitted(&header, &rows, Some(50));
        assert!(narrow.lines().all(|l| l.chars().count() <= 50), "{narrow}");
        assert!(!narrow.lines().next().unwrap().contains("NOTES"), "{narrow}");
        assert!(narrow.contains("VERSION") && narrow.contains("v0.1.0-1-gf42f3aa"), "{narrow}");
        assert!(narrow.contains("(left out to fit: NOTES; see --json)"), "{narrow}");
        let column = narrow.lines().next().unwrap().find("VERSION").unwrap();
        assert!(narrow.lines().nth(2).unwrap()[column..].starts_with("v2"), "aligned to content: {narrow}");
    }

    #[test]
    fn tables_fit_their_content_without_trailing_spaces() {
        let view = Secrets(vec![
            SecretRow { name: "A".into(), set_at: "0123".into() },
            SecretRow { name: "LONGER_NAME".into(), set_at: "4567".into() },
        ]);
        let text = view.render();
        assert!(text.lines().all(|l| l == l.trim_end()), "{text:?}");
        let header = text.lines().next().unwrap();
        assert!(header.contains("NAME") && header.contains("SET AT"));
        let column = header.find("SET AT").unwrap();
        assert!(
            text.lines()
                .skip(1)
                .all(|l| l.get(column..column + 4).is_some_and(|d| d.chars().all(|c| c.is_ascii_digit()))),
            "{text}"
        );
    }
}

/// One check of `ferry doctor`.
#[derive(Debug, Serialize)]
pub struct DoctorRow {
    pub host: String,
    pub region: String,
    pub check: String,
    /// `ok`, `warn` or `fail`.
    pub status: &'static str,
    pub detail: String,
    /// What to do about it.
    pub fix: Option<String>,
}

/// `ferry doctor`: every check of every host, then what to fix.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct Doctor(pub Vec<DoctorRow>);

impl View for Doctor {
    fn render(&self) -> String {
        let header = [("HOST", 9), ("CHECK", 8), ("STATUS", 9), ("DETAIL", 3)];
        let rows: Vec<Vec<String>> = self
            .0
            .iter()
            .map(|r| vec![r.host.clone(), r.check.clone(), r.status.to_string(), r.detail.clone()])
            .collect();
        let mut out = fitted(&header, &rows, width_limit());
        for r in self.0.iter().filter(|r| r.status != "ok") {
            if let Some(fix) = &r.fix {
                let _ = writeln!(out, "{} {} ({}): {fix}", r.host, r.check, r.status);
            }
        }
        out
    }
}
