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
        let mut t = table(&[
            "REGION",
            "HOST",
            "ID",
            "VERSION",
            "STATE",
            "HEALTH",
            "TRAFFIC",
            "PORT",
            "PID",
            "UPTIME",
            "RESTARTS",
            "LAST EXIT",
        ]);
        for r in &self.instances {
            let uptime = r.uptime_secs.map(|s| humantime::format_duration(Duration::from_secs(s)).to_string());
            t.add_row(vec![
                r.region.clone(),
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
        let mut out = out + &rendered(&t);
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
        let mut t = table(&["VERSION", "KIND", "STATUS", "WHEN", "BY", "PREVIOUS"]);
        let mut out = String::new();
        for e in &self.0 {
            t.add_row(vec![
                e.version.clone(),
                e.kind.clone(),
                e.status.clone(),
                e.started_at.clone(),
                e.by.clone(),
                or_dash(e.previous.as_deref()),
            ]);
        }
        out.push_str(&rendered(&t));
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
        let mut t = table(&["ID", "CREATED", "DATABASE", "SIZE", "BEFORE", "AFTER"]);
        for b in &self.0 {
            t.add_row(vec![
                b.id.clone(),
                b.created_at.clone(),
                b.database.clone(),
                b.size.to_string(),
                or_dash(b.release_before.as_deref()),
                or_dash(b.release_after.as_deref()),
            ]);
        }
        rendered(&t)
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
        let mut t = table(&["ID", "NAME", "REGION", "SIZE", "HOST", "ATTACHED", "CREATED"]);
        for v in &self.0 {
            t.add_row(vec![
                v.id.clone(),
                v.name.clone(),
                v.region.clone(),
                format!("{}GB", v.size_gb),
                v.host.clone(),
                or_dash(v.attached.as_deref()),
                v.created_at.clone(),
            ]);
        }
        rendered(&t)
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
        let mut t = table(&["REGION", "INSTANCE", "ADDRESS", "ROLE", "LSN", "LAG", "LAG(s)", "STREAMING"]);
        for m in &self.0 {
            t.add_row(vec![
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
        rendered(&t)
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
