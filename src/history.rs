//! The release history kept in `history.jsonl` on every host: one JSON object per line,
//! appended when an operation starts and when it ends. Reading folds those lines into
//! one entry per operation and works out what is current and what was rolled back.

use serde::{Deserialize, Serialize};

use crate::host::lock::this_machine;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Started,
    Complete,
    Failed,
    Reverted,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub kind: String,
    pub version: String,
    pub previous: Option<String>,
    pub status: Status,
    pub at: String,
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Record {
    pub fn new(kind: &str, version: &str, previous: Option<String>) -> Self {
        let user = crate::host::lock::current_user();
        Self {
            id: format!("{}-{}", crate::host::now_ms(), std::process::id()),
            kind: kind.to_string(),
            version: version.to_string(),
            previous,
            status: Status::Started,
            at: now(),
            by: format!("{user}@{}", this_machine()),
            message: None,
        }
    }

    #[must_use]
    pub fn finished(&self, status: Status, message: Option<String>) -> Self {
        Self { status, at: now(), message, ..self.clone() }
    }

    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// One operation as shown by `ferry releases`.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub id: String,
    pub kind: String,
    pub version: String,
    /// complete, failed, reverted, rolled back, or interrupted (started, never finished).
    pub status: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub by: String,
    pub previous: Option<String>,
    pub message: Option<String>,
    /// Whether this entry left the release that runs now (the last completed deploy
    /// or rollback).
    pub current: bool,
    #[serde(skip)]
    final_status: Status,
}

/// Folds history lines into entries, oldest first.
pub fn entries(text: &str) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    for record in text.lines().filter_map(|l| serde_json::from_str::<Record>(l).ok()) {
        if let Some(entry) = entries.iter_mut().find(|e| e.id == record.id) {
            entry.final_status = record.status;
            entry.finished_at = Some(record.at.clone());
            entry.message.clone_from(&record.message);
            continue;
        }
        entries.push(Entry {
            id: record.id,
            kind: record.kind,
            version: record.version,
            status: String::new(),
            started_at: record.at,
            finished_at: None,
            by: record.by,
            previous: record.previous,
            message: record.message,
            current: false,
            final_status: record.status,
        });
    }
    if let Some(last) = entries
        .iter_mut()
        .rev()
        .find(|e| e.final_status == Status::Complete && (e.kind == "deploy" || e.kind == "rollback"))
    {
        last.current = true;
    }
    for i in 0..entries.len() {
        entries[i].status = match entries[i].final_status {
            Status::Started => "interrupted",
            Status::Complete => "complete",
            Status::Failed => "failed",
            Status::Reverted => "reverted",
        }
        .to_string();
        // A completed rollback marks the release it moved away from.
        if entries[i].kind == "rollback" && entries[i].final_status == Status::Complete {
            if let Some(from) = entries[i].previous.clone() {
                if let Some(j) =
                    (0..i).rev().find(|&j| entries[j].version == from && entries[j].final_status == Status::Complete)
                {
                    entries[j].status = "rolled back".into();
                }
            }
        }
    }
    entries
}

/// The version the last completed deploy or rollback left running, and the one that
/// was current before it.
pub fn current(entries: &[Entry]) -> (Option<String>, Option<String>) {
    entries
        .iter()
        .rev()
        .find(|e| e.final_status == Status::Complete && (e.kind == "deploy" || e.kind == "rollback"))
        .map_or((None, None), |e| (Some(e.version.clone()), e.previous.clone()))
}

/// Whether a deploy or rollback of `version` ever completed.
pub fn completed(entries: &[Entry], version: &str) -> bool {
    entries.iter().any(|e| e.version == version && e.final_status == Status::Complete && e.kind != "migrate")
}

/// Every version the history names, most recently used first (not sorted as text:
/// `v10` after `v9`, as they were deployed).
pub fn by_recency(entries: &[Entry]) -> Vec<String> {
    let mut seen = Vec::new();
    for e in entries.iter().rev() {
        if !seen.contains(&e.version) {
            seen.push(e.version.clone());
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(records: &[Record]) -> String {
        records.iter().map(|r| r.to_line() + "\n").collect()
    }

    #[test]
    fn deploys_fold_into_entries_with_final_status() {
        let v1 = Record::new("deploy", "v1", None);
        let mut v2 = Record::new("deploy", "v2", Some("v1".into()));
        v2.id.push('b');
        let mut v3 = Record::new("deploy", "v3", Some("v2".into()));
        v3.id.push('c');
        let text = lines(&[
            v1.clone(),
            v1.finished(Status::Complete, None),
            v2.clone(),
            v2.finished(Status::Complete, None),
            v3.clone(),
            v3.finished(Status::Reverted, Some("health".into())),
        ]);
        let entries = entries(&text);
        let statuses: Vec<&str> = entries.iter().map(|e| e.status.as_str()).collect();
        assert_eq!(statuses, ["complete", "complete", "reverted"]);
        assert_eq!(current(&entries), (Some("v2".into()), Some("v1".into())));
    }

    #[test]
    fn rollback_marks_the_release_it_left() {
        let v1 = Record::new("deploy", "v1", None);
        let mut v2 = Record::new("deploy", "v2", Some("v1".into()));
        v2.id.push('b');
        let mut rb = Record::new("rollback", "v1", Some("v2".into()));
        rb.id.push('c');
        let text = lines(&[
            v1.finished(Status::Complete, None),
            v2.finished(Status::Complete, None),
            rb.clone(),
            rb.finished(Status::Complete, None),
        ]);
        let entries = entries(&text);
        assert_eq!(entries[1].status, "rolled back");
        assert_eq!(current(&entries).0.as_deref(), Some("v1"));
    }

    #[test]
    fn started_without_end_is_interrupted() {
        let text = lines(&[Record::new("deploy", "v1", None)]);
        assert_eq!(entries(&text)[0].status, "interrupted");
    }
}
